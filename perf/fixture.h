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

#endif
