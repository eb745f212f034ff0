/*
 * tests/test_p2m_mutators_threads.c - several threads mutating one domain's p2m at once
 * (run under ThreadSanitizer and ASan in CI, suite 'concurrency'), so that the table cache
 * (p2m/ept.c) is taken from and refilled by several threads together.
 *
 * Six threads, seeded, on one HVM domain with logging on:
 *  - two vCPUs take log-dirty write faults (splintering 2 MiB leaves down to the page
 *    written) and write guest memory through mv_guest_phys_write, anywhere;
 *  - two balloon threads populate and decrease, each in a region of its own (its record of
 *    what is there must match the p2m at the end), both in a shared region (overlapping:
 *    MV_EEXIST and MV_ENOENT are the races they lose), in 2 MiB extents and 4 KiB pages
 *    (a 4 KiB decrease splinters), and now and then a page far away, whose first populate
 *    takes two or three new tables in one step;
 *  - a retyper splinters superpages with mv_p2m_change_type_range over partial ranges and
 *    with 4 KiB mv_p2m_set_entry calls, and merges 2 MiB again with an order-9 set_entry
 *    (in a region nobody balloons, so the frames it names stay where it found them);
 *  - a harvester peeks and cleans (write faults come back) and turns logging off and on
 *    now and then (which collapses split superpages, to be split again).
 * Every thread also empties the table cache now and then (maybe_drain).
 * Every call's return code is checked against what a lost race may answer; at the end the
 * balloon threads' own regions agree with their records and the audit is clean.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "harness.h"
#include "p2m-internal.h"

#define SLOT 512ull               /* gfns in a 2 MiB slot */
#define SLOTS 8u                  /* slots used in each region */
#define REGION(r) ((mv_gfn_t)(r) << 18) /* regions are 1 GiB apart: each has its own L2 */
#define R_OWN(i) REGION(i)        /* balloon thread i's own region (i = 0, 1) */
#define R_SHARED REGION(2)        /* both balloon threads, the retyper's type ranges */
#define R_STABLE REGION(3)        /* never ballooned: the retyper's set_entry calls */
/* Far pages: balloon thread i's k-th is in 512 GiB slot 1 + 2 (k % 3) + i (of the 8 that
 * 42 bits give), 1 GiB slot k / 3 in it: the first populate in each 512 GiB slot takes an
 * L3, an L2 and an L1 table in one step, the others an L2 and an L1. */
#define FAR(i, k) (((mv_gfn_t)(1 + 2 * ((k) % 3) + (i)) << 27) + ((mv_gfn_t)((k) / 3) << 18) + 5)
#define FAR_SLOTS 12u             /* far pages per balloon thread */
#define NGFNS (SLOTS * SLOT)
#define BALLOON_OPS 2500u
#define RETYPE_OPS 2000u
#define MIN_FAULTS 3000u

static mv_host_t *h;
static mv_domain_t *d;
static _Atomic unsigned busy; /* balloon threads and retyper still running */

struct worker {
    unsigned idx;
    uint64_t seed;
    int line, rc; /* the first failure: source line and return code */
    uint64_t ok, lost; /* calls that did their work, calls that lost a race */
    bool own[NGFNS]; /* balloon threads: their own region, gfn by gfn */
    bool far[FAR_SLOTS];
};

#define CHECK(w, cond, code)                 \
    do {                                     \
        if (!(cond) && !(w)->line) {         \
            (w)->line = __LINE__;            \
            (w)->rc = (code);                \
        }                                    \
    } while (0)

/*
 * Now and then empty the domain's table cache (it takes the p2m lock, as any mutator may
 * call it), so that the next step of every thread finds it short and refills it: refills
 * then overlap with each other and with steps taking frames.
 */
static void maybe_drain(struct th_rng *r, unsigned one_in)
{
    if (th_rand_below(r, one_in) == 0)
        mv__p2m_topup_drain(p2m_of(d));
}

static mv_gfn_t random_gfn(struct th_rng *r)
{
    static const mv_gfn_t regions[] = {R_OWN(0), R_OWN(1), R_SHARED, R_STABLE};
    return regions[th_rand_below(r, 4)] + th_rand_below(r, NGFNS);
}

/* ---- vCPUs ---------------------------------------------------------------------------- */

static void *vcpu_main(void *arg)
{
    struct worker *w = arg;
    struct th_rng r = {.s = w->seed};
    for (uint64_t k = 0; !w->line && (k < MIN_FAULTS || atomic_load(&busy)); k++) {
        mv_gfn_t g = random_gfn(&r);
        int rc;
        maybe_drain(&r, 16);
        if (th_rand_below(&r, 4)) {
            rc = mv_p2m_write_fault(d, g);
            /* Gone (decreased), or made ram_ro by the retyper. */
            CHECK(w, rc == 0 || rc == MV_ENOENT || rc == MV_EACCES, rc);
        } else {
            uint64_t v = th_rand(&r);
            rc = mv_guest_phys_write(d, (g << MV_PAGE_SHIFT) + 8 * th_rand_below(&r, 512), &v,
                                     sizeof(v));
            /* A hole (MV_EFAULT, or MV_ENOENT when the page left after the check), ram_ro. */
            CHECK(w, rc == 0 || rc == MV_EFAULT || rc == MV_ENOENT || rc == MV_EACCES, rc);
        }
        if (rc)
            w->lost++;
        else
            w->ok++;
    }
    return NULL;
}

/* ---- Balloon threads ------------------------------------------------------------------ */

static bool own_slot_full(const struct worker *w, unsigned s)
{
    for (unsigned j = 0; j < SLOT; j++)
        if (!w->own[s * SLOT + j])
            return false;
    return true;
}

static bool own_slot_empty(const struct worker *w, unsigned s)
{
    for (unsigned j = 0; j < SLOT; j++)
        if (w->own[s * SLOT + j])
            return false;
    return true;
}

/* One balloon call in the thread's own region: the outcome is known in advance. */
static void balloon_own(struct worker *w, struct th_rng *r)
{
    mv_gfn_t base = R_OWN(w->idx);
    unsigned s = (unsigned)th_rand_below(r, SLOTS);
    uint64_t done;
    int rc;
    if (th_rand_below(r, 3) == 0) {
        mv_gfn_t g = base + s * SLOT;
        if (own_slot_empty(w, s)) {
            rc = mv_populate_physmap(d, &g, 1, 9, MV_NODE_ANY, &done);
            CHECK(w, rc == 0, rc);
        } else if (own_slot_full(w, s)) {
            rc = mv_decrease_reservation(d, &g, 1, 9, &done);
            /* MV_EBUSY: a vCPU's guest_phys_write holds one of its frames just now. */
            CHECK(w, rc == 0 || rc == MV_EBUSY, rc);
        } else {
            rc = mv_populate_physmap(d, &g, 1, 9, MV_NODE_ANY, &done);
            CHECK(w, rc == MV_EEXIST, rc);
            return;
        }
        if (!rc)
            for (unsigned j = 0; j < SLOT; j++)
                w->own[s * SLOT + j] = !w->own[s * SLOT + j];
    } else {
        unsigned i = s * SLOT + (unsigned)th_rand_below(r, SLOT);
        mv_gfn_t g = base + i;
        if (w->own[i]) {
            rc = mv_decrease_reservation(d, &g, 1, 0, &done); /* splinters a 2 MiB leaf */
            CHECK(w, rc == 0 || rc == MV_EBUSY, rc);
        } else {
            rc = mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done);
            CHECK(w, rc == 0, rc);
        }
        if (!rc)
            w->own[i] = !w->own[i];
    }
    w->ok += rc == 0;
    w->lost += rc != 0;
}

/* One balloon call in the shared region: the other balloon thread may have been first. */
static void balloon_shared(struct worker *w, struct th_rng *r)
{
    unsigned s = (unsigned)th_rand_below(r, SLOTS);
    bool big = th_rand_below(r, 3) == 0;
    mv_gfn_t g = R_SHARED + s * SLOT + (big ? 0 : th_rand_below(r, SLOT));
    uint64_t done;
    int rc;
    if (th_rand_below(r, 2)) {
        rc = mv_populate_physmap(d, &g, 1, big ? 9 : 0, MV_NODE_ANY, &done);
        CHECK(w, rc == 0 || rc == MV_EEXIST, rc);
    } else {
        rc = mv_decrease_reservation(d, &g, 1, big ? 9 : 0, &done);
        CHECK(w, rc == 0 || rc == MV_ENOENT || rc == MV_EBUSY, rc);
    }
    w->ok += rc == 0;
    w->lost += rc != 0;
}

/* A page in a 512 GiB slot of its own: its first populate takes an L3, an L2 and an L1. */
static void balloon_far(struct worker *w, struct th_rng *r)
{
    unsigned k = (unsigned)th_rand_below(r, FAR_SLOTS);
    mv_gfn_t g = FAR(w->idx, k);
    uint64_t done;
    int rc = w->far[k] ? mv_decrease_reservation(d, &g, 1, 0, &done)
                       : mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done);
    CHECK(w, rc == 0, rc);
    if (!rc)
        w->far[k] = !w->far[k];
    w->ok++;
}

static void *balloon_main(void *arg)
{
    struct worker *w = arg;
    struct th_rng r = {.s = w->seed};
    for (unsigned k = 0; k < BALLOON_OPS && !w->line; k++) {
        maybe_drain(&r, 8);
        unsigned op = (unsigned)th_rand_below(&r, 16);
        if (op < 7)
            balloon_own(w, &r);
        else if (op < 15)
            balloon_shared(w, &r);
        else
            balloon_far(w, &r);
    }
    atomic_fetch_sub(&busy, 1);
    return NULL;
}

/* ---- The retyper ---------------------------------------------------------------------- */

/* Rewrite one 4 KiB entry of the stable region with its own frame: splinters a 2 MiB leaf. */
static void retype_page(struct worker *w, struct th_rng *r)
{
    mv_gfn_t g = R_STABLE + th_rand_below(r, NGFNS);
    struct mv_p2m_entry e;
    int rc = mv_p2m_lookup(d, g, &e);
    CHECK(w, rc == 0 && p2m_is_ram(e.type), rc);
    unsigned type = th_rand_below(r, 4) ? MV_P2M_RAM_RW : MV_P2M_RAM_RO;
    rc = mv_p2m_set_entry(d, g, e.mfn, 0, type, MV_P2M_RWX);
    CHECK(w, rc == 0, rc);
    w->ok++;
}

/* Map a whole slot of the stable region as one 2 MiB leaf again (its frames are contiguous:
 * populated as one extent, never ballooned). */
static void merge_slot(struct worker *w, struct th_rng *r)
{
    mv_gfn_t g = R_STABLE + th_rand_below(r, SLOTS) * SLOT;
    struct mv_p2m_entry e;
    int rc = mv_p2m_lookup(d, g, &e);
    CHECK(w, rc == 0 && p2m_is_ram(e.type) && !(e.mfn & (SLOT - 1)), rc);
    rc = mv_p2m_set_entry(d, g, e.mfn, 9, MV_P2M_RAM_RW, MV_P2M_RWX);
    CHECK(w, rc == 0, rc);
    w->ok++;
}

/* Retype part of a region: whatever superpage the range cuts is splintered. */
static void retype_range(struct worker *w, struct th_rng *r)
{
    mv_gfn_t base = th_rand_below(r, 2) ? R_SHARED : R_STABLE;
    mv_gfn_t first = base + th_rand_below(r, NGFNS - 1);
    uint64_t count = 1 + th_rand_below(r, 700), done;
    if (first + count > base + NGFNS)
        count = base + NGFNS - first;
    static const unsigned from[] = {MV_P2M_RAM_RW, MV_P2M_RAM_LOGDIRTY, MV_P2M_RAM_RO};
    unsigned f = (unsigned)th_rand_below(r, 3);
    unsigned to = f == 2 ? MV_P2M_RAM_RW : MV_P2M_RAM_RO;
    int rc = mv_p2m_change_type_range(d, first, count, from[f], to, &done);
    CHECK(w, rc == 0 && done == count, rc);
    w->ok++;
}

static void *retyper_main(void *arg)
{
    struct worker *w = arg;
    struct th_rng r = {.s = w->seed};
    for (unsigned k = 0; k < RETYPE_OPS && !w->line; k++) {
        maybe_drain(&r, 8);
        unsigned op = (unsigned)th_rand_below(&r, 16);
        if (op < 8)
            retype_range(w, &r);
        else if (op < 15)
            retype_page(w, &r);
        else
            merge_slot(w, &r);
    }
    atomic_fetch_sub(&busy, 1);
    return NULL;
}

/* ---- The harvester -------------------------------------------------------------------- */

static void *harvester_main(void *arg)
{
    struct worker *w = arg;
    struct th_rng r = {.s = w->seed};
    static uint64_t bm[NGFNS / 64];
    static const mv_gfn_t regions[] = {R_OWN(0), R_OWN(1), R_SHARED, R_STABLE};
    bool logging = true;
    while (!w->line && atomic_load(&busy)) {
        unsigned op = (unsigned)th_rand_below(&r, 32);
        int rc;
        if (op < 8) {
            mv__p2m_topup_drain(p2m_of(d));
        } else if (op == 8) {
            rc = logging ? mv_p2m_logdirty_disable(d) : mv_p2m_logdirty_enable(d);
            /* MV_EBUSY: populates kept racing with the enable; logging stays off. */
            CHECK(w, rc == 0 || (!logging && rc == MV_EBUSY), rc);
            if (!rc)
                logging = !logging;
        } else if (logging) {
            uint64_t done, dirty;
            rc = mv_p2m_logdirty_peek_and_clean(d, regions[th_rand_below(&r, 4)], NGFNS, bm,
                                                NGFNS, &done, &dirty);
            CHECK(w, rc == 0 && done == NGFNS, rc);
        }
        w->ok++;
    }
    if (!logging && !w->line) {
        int rc;
        while ((rc = mv_p2m_logdirty_enable(d)) == MV_EBUSY)
            ;
        CHECK(w, rc == 0, rc);
    }
    return NULL;
}

/* ---- The test ------------------------------------------------------------------------- */

static void test_mutators_at_once(void **state)
{
    (void)state;
    struct th_platform *tp;
    h = th_host_create(256 * TH_MiB, NULL, &tp);
    struct mv_domain_config c = {.size = sizeof(c), .domid = 1, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_HAP, .nr_vcpus = 2, .phys_bits = 42,
                                 /* room for populates that lose to the other thread:
                                  * their frames are allocated before the lock */
                                 .max_pages = 6 * NGFNS + 2 * FAR_SLOTS,
                                 .node_affinity = MV_NODE_ANY};
    assert_int_equal(mv_domain_create(h, &c, &d), 0);

    enum { V0, V1, B0, B1, RT, HV, NR };
    struct worker *w = test_calloc(NR, sizeof(*w));
    /* Both own regions start full of 2 MiB leaves, the stable region too; shared empty. */
    uint64_t done;
    for (unsigned s = 0; s < SLOTS; s++) {
        mv_gfn_t g[3] = {R_OWN(0) + s * SLOT, R_OWN(1) + s * SLOT, R_STABLE + s * SLOT};
        for (unsigned i = 0; i < 3; i++)
            assert_int_equal(mv_populate_physmap(d, &g[i], 1, 9, MV_NODE_ANY, &done), 0);
    }
    for (unsigned j = 0; j < NGFNS; j++)
        w[B0].own[j] = w[B1].own[j] = true;
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);

    void *(*mains[NR])(void *) = {vcpu_main, vcpu_main, balloon_main, balloon_main,
                                  retyper_main, harvester_main};
    const char *names[NR] = {"vcpu 0", "vcpu 1", "balloon 0", "balloon 1", "retyper",
                             "harvester"};
    atomic_store(&busy, 3);
    pthread_t th[NR];
    for (unsigned i = 0; i < NR; i++) {
        w[i].idx = i == B1 ? 1 : 0;
        w[i].seed = 0xcace0000ull + 17 * i;
        assert_int_equal(pthread_create(&th[i], NULL, mains[i], &w[i]), 0);
    }
    for (unsigned i = 0; i < NR; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    for (unsigned i = 0; i < NR; i++)
        if (w[i].line)
            fail_msg("%s: check at line %d failed (%d, %s)", names[i], w[i].line, w[i].rc,
                     mv_strerror_name(w[i].rc));
    for (unsigned i = 0; i < NR; i++) {
        print_message("%-9s %6llu done, %6llu lost races\n", names[i],
                      (unsigned long long)w[i].ok, (unsigned long long)w[i].lost);
        assert_true(w[i].ok > 0);
    }

    /* Each balloon thread's own gfns are mapped exactly where its record says. */
    for (unsigned b = 0; b < 2; b++) {
        const struct worker *bw = &w[B0 + b];
        for (unsigned j = 0; j < NGFNS; j++) {
            struct mv_p2m_entry e;
            assert_int_equal(mv_p2m_lookup(d, R_OWN(b) + j, &e), 0);
            if ((e.type != MV_P2M_INVALID) != bw->own[j])
                fail_msg("balloon %u: gfn %#llx is %s, its record says %s", b,
                         (unsigned long long)(R_OWN(b) + j),
                         e.type != MV_P2M_INVALID ? "mapped" : "empty",
                         bw->own[j] ? "mapped" : "empty");
        }
        for (unsigned k = 0; k < FAR_SLOTS; k++) {
            struct mv_p2m_entry e;
            assert_int_equal(mv_p2m_lookup(d, FAR(b, k), &e), 0);
            assert_int_equal(e.type != MV_P2M_INVALID, bw->far[k]);
        }
    }
    struct mv_p2m_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_p2m_stats(d, &st), 0);
    print_message("splinters %llu, write faults %llu, logdirty splits %llu, collapsed %llu, "
                  "tables %llu\n", (unsigned long long)st.splinters,
                  (unsigned long long)st.write_faults, (unsigned long long)st.logdirty_splits,
                  (unsigned long long)st.logdirty_collapsed, (unsigned long long)st.table_frames);
    const struct mv_p2m *p = p2m_of(d);
    print_message("table cache: %llu refills, %llu found it refilled by another thread\n",
                  (unsigned long long)p->cache_refills, (unsigned long long)p->cache_surplus);
    assert_true(st.splinters > 0 && st.write_faults > 0 && st.logdirty);
    assert_true(p->cache_refills > 0);
    th_assert_audit_clean(h);

    /* The end state works on: a last round of the same mutators, single-threaded. */
    assert_int_equal(mv_p2m_logdirty_disable(d), 0);
    mv_gfn_t g = R_SHARED + 3;
    int rc = mv_decrease_reservation(d, &g, 1, 0, &done);
    assert_true(rc == 0 || rc == MV_ENOENT);
    assert_int_equal(mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done), 0);
    th_assert_audit_clean(h);

    test_free(w);
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
    assert_int_equal(mv_host_drain(h), 0);
    th_host_destroy(h, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutators_at_once),
    };
    return cmocka_run_group_tests_name("p2m_mutators_threads", tests, NULL, NULL);
}
