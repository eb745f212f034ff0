/*
 * tests/harness.c - the shared test platform and helpers (see harness.h).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static struct th_platform *tp_of(const struct mv_platform *p)
{
    return (struct th_platform *)(void *)p;
}

static void th_log(const struct mv_platform *p, int level, const char *msg)
{
    struct th_platform *tp = tp_of(p);
    atomic_fetch_add(&tp->logs, 1);
    snprintf(tp->last_log, sizeof(tp->last_log), "%d: %s", level, msg);
}

static uint64_t th_clock(const struct mv_platform *p)
{
    return tp_of(p)->fake_now;
}

static void th_flush(const struct mv_platform *p, const struct mv_flush_request *req)
{
    (void)req;
    atomic_fetch_add(&tp_of(p)->flushes, 1);
}

static int th_decommit(const struct mv_platform *p, mv_mfn_t first, uint64_t count)
{
    struct th_platform *tp = tp_of(p);
    uint32_t f = atomic_load(&tp->fail_decommit);
    while (f) {
        if (atomic_compare_exchange_weak(&tp->fail_decommit, &f, f - 1))
            return MV_EIO;
    }
    atomic_fetch_add(&tp->decommit_calls, 1);
    atomic_fetch_add(&tp->decommit_frames, count);
    return tp->posix->mem_decommit(p, first, count);
}

static void *th_meta_alloc(const struct mv_platform *p, size_t size, size_t align)
{
    struct th_platform *tp = tp_of(p);
    int64_t left = atomic_load(&tp->meta_fail_in);
    if (left >= 0 && atomic_fetch_sub(&tp->meta_fail_in, 1) == 0)
        return NULL;
    return tp->posix->meta_alloc(p, size, align);
}

struct th_platform *th_platform_create(uint64_t mem_bytes, const char *topology)
{
    struct mv_posix_config pc = {.size = sizeof(pc), .mem_bytes = mem_bytes,
                                 .topology = topology ? topology : "pack:1 numa:1 core:1 pu:1"};
    struct mv_platform *posix = NULL;
    int rc = mv_posix_platform_create(&pc, &posix);
    if (rc) {
        fail_msg("posix platform: %s", mv_strerror_name(rc));
        return NULL;
    }
    struct th_platform *tp = calloc(1, sizeof(*tp));
    assert_non_null(tp);
    tp->p = *posix;
    tp->posix = posix;
    tp->p.log = th_log;
    tp->p.clock_ns = th_clock;
    tp->p.tlb_flush = th_flush;
    tp->p.mem_decommit = th_decommit;
    tp->p.meta_alloc = th_meta_alloc;
    atomic_store(&tp->meta_fail_in, -1);
    tp->fake_now = 1000;
    return tp;
}

void th_platform_destroy(struct th_platform *tp)
{
    if (!tp)
        return;
    mv_posix_platform_destroy(tp->posix);
    free(tp);
}

mv_host_t *th_host_create_cfg(struct mv_host_config *cfg, const char *topology,
                              struct th_platform **tpp)
{
    struct th_platform *tp = th_platform_create(cfg->mem_bytes, topology);
    cfg->size = sizeof(*cfg);
    cfg->platform = &tp->p;
    mv_host_t *h = NULL;
    int rc = mv_host_create(cfg, &h);
    if (rc) {
        th_platform_destroy(tp);
        fail_msg("mv_host_create: %s", mv_strerror_name(rc));
    }
    if (tpp)
        *tpp = tp;
    return h;
}

mv_host_t *th_host_create(uint64_t mem_bytes, const char *topology, struct th_platform **tpp)
{
    struct mv_host_config cfg = {.size = sizeof(cfg), .mem_bytes = mem_bytes};
    return th_host_create_cfg(&cfg, topology, tpp);
}

void th_host_destroy(mv_host_t *h, struct th_platform *tp)
{
    th_assert_audit_clean(h);
    mv_host_destroy(h);
    th_platform_destroy(tp);
}

void th_assert_audit_clean(mv_host_t *h)
{
    static struct mv_audit_report rep;
    memset(&rep, 0, sizeof(rep));
    rep.size = sizeof(rep);
    int rc = mv_host_audit(h, &rep);
    if (rc == 0 && rep.nr_violations == 0)
        return;
    for (uint64_t i = 0; i < rep.nr_violations && i < MV_AUDIT_MAX_RECORDED; i++)
        print_error("audit: %s %s mfn=%#llx dom=%u expected=%#llx found=%#llx\n",
                    rep.v[i].invariant, rep.v[i].what, (unsigned long long)rep.v[i].mfn,
                    rep.v[i].domid, (unsigned long long)rep.v[i].detail[0],
                    (unsigned long long)rep.v[i].detail[1]);
    fail_msg("audit: rc=%s, %llu violations", mv_strerror_name(rc),
             (unsigned long long)rep.nr_violations);
}

int th_audit_has(mv_host_t *h, const char *what)
{
    static struct mv_audit_report rep;
    memset(&rep, 0, sizeof(rep));
    rep.size = sizeof(rep);
    int rc = mv_host_audit(h, &rep);
    if (rc != MV_EUCLEAN)
        return 0;
    for (uint64_t i = 0; i < rep.nr_violations && i < MV_AUDIT_MAX_RECORDED; i++)
        if (!strcmp(rep.v[i].what, what))
            return 1;
    return 0;
}

uint64_t th_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, rss = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%llu %llu", &size, &rss) != 2)
        rss = 0;
    fclose(f);
    return rss * (uint64_t)sysconf(_SC_PAGESIZE);
}
