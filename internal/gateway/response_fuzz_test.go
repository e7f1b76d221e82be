package gateway

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

// chunks cuts b into pieces of random sizes drawn from seed: empty reads, single bytes, small
// and ring-sized pieces and the rest, as a network delivers a body.
func chunks(b []byte, seed uint64) [][]byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var out [][]byte
	for len(b) > 0 {
		var n int
		switch rng.IntN(8) {
		case 0:
			n = 0
		case 1:
			n = 1
		case 2, 3:
			n = rng.IntN(64)
		case 4:
			n = rng.IntN(tailKeep + 2)
		case 5:
			n = tailKeep - 1 + rng.IntN(3)
		case 6:
			n = rng.IntN(3 * tailKeep)
		default:
			n = len(b)
		}
		n = min(n, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// FuzzTail checks the usage tail (tail): however an answer is cut into reads, and whatever a
// reused tail held before its reset,
//   - the kept bytes are exactly the answer's last tailKeep bytes;
//   - the usage and the mid-stream error read from them are those read from the whole answer
//     written at once.
func FuzzTail(f *testing.F) {
	for i, b := range seedAnswers() {
		f.Add([]byte(b), uint64(i), uint16(0), strings.Contains(b, `"usage"`))
		f.Add([]byte(b), uint64(i)*7919, uint16(tailKeep-len(b)%tailKeep), false)
	}
	f.Add([]byte(`"usageMetadata": {"promptTokenCount": 9}`), uint64(3), uint16(tailKeep-20), false)
	f.Fuzz(func(t *testing.T, body []byte, seed uint64, pad uint16, openAI bool) {
		// Padding in front makes the ring wrap at every offset.
		whole := append(bytes.Repeat([]byte(" "), int(pad)%(3*tailKeep)), body...)
		ref := new(tail)
		ref.reset()
		ref.write(whole)
		ref.finish()
		want := whole[max(0, len(whole)-tailKeep):]
		if !bytes.Equal(ref.buf, want) {
			t.Fatalf("one write of %d bytes keeps %d bytes that are not its end", len(whole), len(ref.buf))
		}
		t1 := new(tail)
		t1.write(bytes.Repeat([]byte("x"), int(seed%uint64(2*tailKeep))))
		t1.finish()
		t1.reset()
		for _, c := range chunks(whole, seed) {
			t1.write(c)
		}
		t1.finish()
		if !bytes.Equal(t1.buf, want) {
			t.Fatalf("reads of %d bytes (seed %d) keep %q, want %q", len(whole), seed, t1.buf, want)
		}
		for _, oa := range []bool{openAI, !openAI} {
			if got, w := t1.usage(oa), ref.usage(oa); got != w {
				t.Fatalf("usage %+v from reads, %+v from the whole", got, w)
			}
		}
		c1, m1, ok1 := t1.streamError()
		c2, m2, ok2 := ref.streamError()
		if c1 != c2 || m1 != m2 || ok1 != ok2 {
			t.Fatalf("stream error (%d %q %v) from reads, (%d %q %v) from the whole", c1, m1, ok1, c2, m2, ok2)
		}
	})
}

// fuzzKeys are pool keys the masker is checked with: a standard key, an auth key, and a
// secret shorter than the redaction word.
var fuzzKeys = []string{fuzzPoolKey, "AQ.Ab8RN6K2x_yZ-0123456789abcdef.ghijKLMN", "k3y-sh0rt"}

// keyRun is how many characters of a key in a row the masked output may never hold.
const keyRun = 20

// holdsKeyRun tells whether b holds keyRun characters in a row of key.
func holdsKeyRun(b []byte, key string) bool {
	for i := 0; i+keyRun <= len(key); i++ {
		if bytes.Contains(b, []byte(key[i:i+keyRun])) {
			return true
		}
	}
	return false
}

// FuzzKeyFilter checks the key masker (keyFilter) on an answer holding the pool key at places
// drawn from seed, cut into reads at random:
//   - the output is what masking the whole answer at once gives (maskSecret), of the same
//     length (a Content-Length stays true);
//   - it never holds the key, nor keyRun characters of it in a row unless the text around the
//     keys did;
//   - text without the key passes byte for byte.
func FuzzKeyFilter(f *testing.F) {
	for i, b := range seedAnswers() {
		f.Add([]byte(b), uint64(i), uint8(i))
	}
	f.Add([]byte(`{"error":{"message":"API key not valid: `+fuzzPoolKey[:30]+`"}}`), uint64(1), uint8(1))
	f.Add([]byte("AIzaAIzaSyAIzaSyFUZZ-0123AIzaSyFUZZ-0123456789abcdefghijKLMNOPQR"), uint64(2), uint8(3))
	f.Add([]byte("AQ.AQ.Ab8RN6K2x_yZ"), uint64(5), uint8(4))
	f.Fuzz(func(t *testing.T, text []byte, seed uint64, shape uint8) {
		key := fuzzKeys[int(shape)%len(fuzzKeys)]
		rng := rand.New(rand.NewPCG(seed, uint64(shape)))
		// The key at 0 to 3 places of the text, sometimes right after a prefix of itself.
		body := append([]byte(nil), text...)
		for range int(shape/3) % 4 {
			at := rng.IntN(len(body) + 1)
			ins := key
			if rng.IntN(3) == 0 {
				ins = key[:rng.IntN(len(key))] + key
			}
			body = append(body[:at:at], append([]byte(ins), body[at:]...)...)
		}
		kf := keyFilter{secret: []byte(key)}
		var out []byte
		for _, c := range chunks(body, seed) {
			out = append(out, kf.filter(c)...)
		}
		out = append(out, kf.flush()...)
		if want := maskSecret(body, key); !bytes.Equal(out, want) {
			t.Fatalf("key %q, body %q: reads give %q, the whole %q", key, body, out, want)
		}
		if len(out) != len(body) {
			t.Fatalf("%d bytes in, %d out", len(body), len(out))
		}
		if bytes.Contains(out, []byte(key)) {
			t.Fatalf("the key passed: %q", out)
		}
		// The text around the keys: what a body holds besides the keys it echoes.
		if !holdsKeyRun(bytes.ReplaceAll(body, []byte(key), []byte{0}), key) && holdsKeyRun(out, key) {
			t.Fatalf("%d characters of the key in a row passed: %q", keyRun, out)
		}
		if !bytes.Contains(text, []byte(key)) {
			kf := keyFilter{secret: []byte(key)}
			var plain []byte
			for _, c := range chunks(text, seed) {
				plain = append(plain, kf.filter(c)...)
			}
			plain = append(plain, kf.flush()...)
			if !bytes.Equal(plain, text) {
				t.Fatalf("text without the key changed: %q became %q", text, plain)
			}
		}
	})
}
