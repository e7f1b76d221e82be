package postgres

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/geminisynapse/caddy-gemini-synapse/internal/pgtest"
	"github.com/geminisynapse/caddy-gemini-synapse/store"
)

// TestCallsToAStoppedServerAreUnavailable: every call of store.Store that reads or writes the
// database fails with an error matching store.ErrUnavailable while the server is down (the
// admin API answers 503 for it), and works again once it is back.
func TestCallsToAStoppedServerAreUnavailable(t *testing.T) {
	srv := pgtest.NewServer(t)
	s := openTest(t, srv.URL(t)+"&connect_timeout=2", nil, nil)
	ctx := context.Background()
	if _, err := s.Keys(ctx); err != nil { // a connection in the pool, which the stop breaks
		t.Fatal(err)
	}
	srv.Stop(t)

	iface := reflect.TypeOf((*store.Store)(nil)).Elem()
	errType := reflect.TypeOf((*error)(nil)).Elem()
	ctxType := reflect.TypeOf((*context.Context)(nil)).Elem()
	now := time.Now()
	checked := 0
	for i := range iface.NumMethod() {
		m := iface.Method(i)
		ft := m.Type
		if ft.NumOut() == 0 || ft.Out(ft.NumOut()-1) != errType || ft.NumIn() == 0 || ft.In(0) != ctxType {
			continue // no error to check (queued writes, Path, Close)
		}
		args := []reflect.Value{reflect.ValueOf(ctx)}
		for j := 1; j < ft.NumIn(); j++ {
			switch in := ft.In(j); {
			case in == reflect.TypeOf(time.Time{}):
				args = append(args, reflect.ValueOf(now))
			case in == reflect.TypeOf([]time.Time{}):
				args = append(args, reflect.ValueOf([]time.Time{now.Add(-time.Hour), now}))
			case in.Kind() == reflect.Int64:
				args = append(args, reflect.ValueOf(int64(1)).Convert(in))
			case in.Kind() == reflect.String:
				args = append(args, reflect.ValueOf(store.StatusDisabled).Convert(in)) // a valid status, and a name as good as any
			case in == reflect.TypeOf([]string{}):
				args = append(args, reflect.ValueOf([]string{"secret-0123456789"}))
			case in == reflect.TypeOf([]int64{}):
				args = append(args, reflect.ValueOf([]int64{1}))
			case ft.IsVariadic() && j == ft.NumIn()-1:
				one := reflect.MakeSlice(in, 1, 1)
				if e := one.Index(0); e.Kind() == reflect.Struct {
					if f := e.FieldByName("Name"); f.IsValid() {
						f.SetString("files/x")
					}
				}
				args = append(args, one)
			default:
				args = append(args, reflect.Zero(in))
			}
		}
		method := reflect.ValueOf(s).MethodByName(m.Name)
		var out []reflect.Value
		if ft.IsVariadic() {
			out = method.CallSlice(args)
		} else {
			out = method.Call(args)
		}
		err, _ := out[len(out)-1].Interface().(error)
		switch {
		case err == nil:
			t.Logf("%s: no error (it needed no query for these arguments)", m.Name)
		case errors.Is(err, store.ErrUnavailable):
			checked++
		default:
			t.Errorf("%s: %v, does not match store.ErrUnavailable", m.Name, err)
		}
	}
	t.Logf("%d calls failed as unavailable", checked)
	if checked < 30 {
		t.Errorf("only %d calls checked", checked)
	}

	srv.Start(t)
	if _, err := s.Keys(ctx); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
}

func TestStatementErrorsAreNotUnavailable(t *testing.T) {
	s := newStore(t, nil)
	ctx := context.Background()
	if err := wrap("x", func() error { _, err := s.pool.Exec(ctx, `SELECT 1/0`); return err }()); err == nil || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("a division by zero: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Keys(cctx); err == nil || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("a canceled call: %v", err)
	}
	if err := s.DeleteKey(ctx, 12345); !errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("an unknown key: %v", err)
	}
}
