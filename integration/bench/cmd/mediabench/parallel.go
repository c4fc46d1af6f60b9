package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// parallelWorkers is how many requests set-up keeps in flight: enough to
// hide a round trip, few enough for one core.
const parallelWorkers = 32

// forEachPrefix calls do for items 0 to n-1, parallelWorkers at a time.
// It stops at the first error, which it returns, and, when budget > 0,
// starts no item once budget has passed. It returns how many items, from
// the first, were done: with a budget, the caller gets a usable prefix.
func forEachPrefix(ctx context.Context, n int, budget time.Duration, do func(ctx context.Context, i int) error) (int, error) {
	var deadline time.Time
	if budget > 0 {
		deadline = time.Now().Add(budget)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	done := make([]bool, n)
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range parallelWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil || (!deadline.IsZero() && time.Now().After(deadline)) {
					return
				}
				if err := do(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
				done[i] = true
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	prefix := 0
	for prefix < n && done[prefix] {
		prefix++
	}
	return prefix, ctx.Err()
}
