//go:build race

package gateway

// raceEnabled tells the tests that measure memory that the race detector inflates it.
const raceEnabled = true
