/*
 * perf/fixture.h - what the module benchmarks share around the engine: tearing a
 * benchmark's host down with the checks every run ends with, a seeded generator and a
 * clock.
 */
#ifndef MVB_FIXTURE_H
#define MVB_FIXTURE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <memvirt/memvirt.h>

/*
 * Destroy the domains (NULL entries skipped; preempted destroys continued), audit the host
 * and destroy it. A failed destroy or a violation is reported against `bench`
 * (mvb_report_failure: memvirt-bench then exits non-zero). Safe with h == NULL.
 */
void mvb_fixture_teardown(const char *bench, mv_host_t *h, mv_domain_t *const *doms, size_t n);

/* xorshift64: a benchmark's seeded sequence (the state must not be 0). */
static inline uint64_t mvb_xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* CLOCK_MONOTONIC in nanoseconds (for benchmarks that keep manual time). */
static inline uint64_t mvb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * What one mvb_now_ns() costs, as seen between two readings taken back to back: the median
 * of 255 such pairs, measured once (per source file that uses it). An interval holds
 * about that much of the clock's own time; benchmarks that time a few operations per
 * interval take it out (mvb_interval_ns), so that a 25 ns clock read (a virtual machine's
 * clock source) does not count as work.
 */
static inline uint64_t mvb_clock_cost_ns(void)
{
    static uint64_t cost = UINT64_MAX;
    if (cost != UINT64_MAX)
        return cost;
    enum { PAIRS = 255 };
    uint64_t d[PAIRS];
    for (unsigned i = 0; i < PAIRS; i++) {
        uint64_t a = mvb_now_ns();
        d[i] = mvb_now_ns() - a;
    }
    for (unsigned i = 1; i < PAIRS; i++) /* insertion sort: 255 values, once */
        for (unsigned j = i; j > 0 && d[j - 1] > d[j]; j--) {
            uint64_t t = d[j];
            d[j] = d[j - 1];
            d[j - 1] = t;
        }
    return cost = d[PAIRS / 2];
}

/* t1 - t0 without the clock's own cost (never below zero). */
static inline uint64_t mvb_interval_ns(uint64_t t0, uint64_t t1)
{
    uint64_t c = mvb_clock_cost_ns(), d = t1 - t0;
    return d > c ? d - c : 0;
}

#endif
