package store

// AccessKeyUsage adds up the request log of one access key over a time range.
//
// This file only lets the admin branch build until the store branch, which defines the same
// type in its own file, is merged; delete it then.
type AccessKeyUsage struct {
	// AccessKeyID is the access key (0: requests made with none).
	AccessKeyID int64
	// Requests, Failures and the tokens add up the key's requests, as Usage does.
	Requests, Failures, PromptTokens, CandidatesTokens, TotalTokens int64
	// Limited counts the requests refused by a limit of the key's policy.
	Limited int64
	// LimitsHit counts them per limit (rpm, rpd, tpm, token_budget, concurrency, models,
	// expired).
	LimitsHit map[string]int64
}
