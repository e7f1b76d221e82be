package keypool

import (
	"fmt"
	"testing"
	"time"
)

var benchSizes = []int{10, 1000, 100_000}

// benchPool builds a pool of n keys where some keys carry cooldowns for other
// models and a few are disabled, as a long-running pool would.
func benchPool(n int) *Pool {
	ks := make([]Key, n)
	var cds []Cooldown
	for i := range ks {
		ks[i] = Key{ID: int64(i + 1), Secret: fmt.Sprintf("secret-%d", i+1), Disabled: i%97 == 96}
		if i%7 == 0 {
			cds = append(cds, Cooldown{KeyID: int64(i + 1), Model: "gemini-2.5-pro", Until: t0.Add(time.Hour)})
		}
	}
	p := New(3)
	p.Load(ks, cds)
	return p
}

func BenchmarkNext(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			p := benchPool(n)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, _, err := p.Next("gemini-2.5-flash", t0, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkNextParallel(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			p := benchPool(n)
			skip := []int64{1, 2, 3}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, _, err := p.Next("gemini-2.5-flash", t0, skip); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkReportSuccess is the pool's share of every successful request: Admit, Next and
// the Success report (which feeds the model's outage window).
func BenchmarkReportSuccess(b *testing.B) {
	p := benchPool(1000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if ok, _ := p.Admit("gemini-2.5-flash", t0); !ok {
				b.Error("refused")
				return
			}
			id, _, err := p.Next("gemini-2.5-flash", t0, nil)
			if err != nil {
				b.Error(err)
				return
			}
			p.Report(id, "gemini-2.5-flash", Outcome{Kind: Success}, t0)
		}
	})
}
