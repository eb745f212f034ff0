/*
 * tests/harness.h - what every suite shares: a test platform that wraps the posix one and
 * replaces only the hooks a test observes (log, clock, TLB flush, decommit), a seeded
 * generator, resident-memory readings and an audit check that names what it found.
 */
#ifndef MV_TEST_HARNESS_H
#define MV_TEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <memvirt/memvirt.h>

struct th_platform {
    struct mv_platform p;        /* a copy of the posix platform, some hooks replaced */
    struct mv_platform *posix;   /* the wrapped platform (owned) */
    uint64_t fake_now;           /* the clock hook's answer; tests advance it */
    _Atomic uint64_t flushes;
    _Atomic uint64_t decommit_calls;
    _Atomic uint64_t decommit_frames;
    _Atomic uint32_t fail_decommit; /* decommit calls to fail from now */
    _Atomic int64_t meta_fail_in;   /* meta_alloc calls that succeed before one fails; <0: off */
    _Atomic uint64_t logs;
    char last_log[256];
};

/* A platform over `mem_bytes` of machine memory with the given topology (NULL: 1 node). */
struct th_platform *th_platform_create(uint64_t mem_bytes, const char *topology);
void th_platform_destroy(struct th_platform *tp);

/* A host over a fresh test platform; *tp (optional) receives the platform. */
mv_host_t *th_host_create(uint64_t mem_bytes, const char *topology, struct th_platform **tp);
mv_host_t *th_host_create_cfg(struct mv_host_config *cfg, const char *topology,
                              struct th_platform **tp);
/* Audits (must be clean), destroys the host and its platform. */
void th_host_destroy(mv_host_t *h, struct th_platform *tp);

/* Fails the test, listing every violation, unless the audit is clean. */
void th_assert_audit_clean(mv_host_t *h);
/* True when the audit reports a violation named `what`. */
int th_audit_has(mv_host_t *h, const char *what);

/* Deterministic generator (splitmix64). */
struct th_rng {
    uint64_t s;
};
static inline uint64_t th_rand(struct th_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline uint64_t th_rand_below(struct th_rng *r, uint64_t n)
{
    return n ? th_rand(r) % n : 0;
}

/* Resident set size of this process in bytes (/proc/self/statm). */
uint64_t th_rss_bytes(void);

#define TH_MiB (1ull << 20)
#define TH_GiB (1ull << 30)

/* "pv", "hap" or "shadow" for messages. */
static inline const char *th_paging_name(uint32_t paging)
{
    return paging == MV_PAGING_HAP ? "hap" : paging == MV_PAGING_SHADOW ? "shadow" : "pv";
}

#endif
