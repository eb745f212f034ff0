/*
 * tests/test_shadow_threads.c - one shadow domain, three vCPUs on three real threads and
 * the p2m changing under them on a fourth (run under ThreadSanitizer in CI, suite
 * 'concurrency').
 *
 * The vCPUs fault on shared and private tables, emulate PTE writes and compare-exchanges
 * on them (a shared table is written by several vCPUs at once, and walked by the others
 * while it is), rewrite upper entries, INVLPG, switch between a shared root and a private
 * one, emulate writes to data pages. The fourth thread changes the p2m, with the pool two
 * frames above its floor, in three phases:
 *  - balloon: data gfns decreased and populated again (an emulated write racing with the
 *    decrease of its page, XSA-219), shadows blown;
 *  - log-dirty: logging turned on and off, peek-and-clean rounds, shadows blown;
 *  - both: ballooning and peek-and-clean while logging, so that a write fault's log-dirty
 *    step meets a page ballooned out since the fault looked it up.
 * Seeds are fixed; the interleaving is the scheduler's, so only what holds for every
 * interleaving is asserted: each call's return code and outcome, and after each phase,
 * with the threads gone, every translation through every root a vCPU holds agrees with a
 * walk of the guest's tables through the p2m, and the audit is clean.
 *
 * Why phases: the p2m's table cache (p2m/ept.c) used to be refilled with no lock held, so
 * two threads in p2m mutators on one domain - a vCPU's log-dirty write fault
 * (mv_p2m_write_fault) and a decrease or populate, or two vCPUs' write faults - raced on
 * it whenever it needed refilling (TSan reported it; a corrupted cache crashed teardown).
 * The phases kept to what was safe then: in the log-dirty phase only vCPU 0 took write
 * faults and the p2m thread neither decreased nor populated; the last phase starts with
 * the cache full and the data region already split (the balloon phase split it), and does
 * nothing that splits (no 2 MiB leaf left to split there, logging never turned off, which
 * could rebuild one). The cache is now guarded by the p2m lock (mv__p2m_lock_cache, and
 * tests/test_p2m_mutators_threads.c), so P2M_TOPUP_IS_THREAD_SAFE is 1: every vCPU takes
 * write faults and the p2m thread balloons in the log-dirty phase too; 0 brings back the
 * old restrictions.
 */
#define P2M_TOPUP_IS_THREAD_SAFE 1

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "shadow_helpers.h"

#define VCPUS 3u
#define ITERS 6000u         /* actions per vCPU */
#define P2M_MIN_ROUNDS 1500u
#define G_L4 1ull           /* the shared root */
#define G_L3 2ull
#define G_L2 3ull
#define SH_TABLES 16u       /* shared L1 tables at gfns 100.. */
#define PRIV_TABLES 8u      /* per vCPU, at 200 + 16 * c .. */
#define ENTRIES 32u         /* entries used in each L1 */
#define DATA 1024ull        /* data gfns [DATA, DATA + NDATA) */
#define NDATA 512u
#define RAM 2048u
#define TABLE (PTE_P | PTE_W | PTE_U)

static mv_host_t *h;
static mv_domain_t *d;
static _Atomic unsigned vcpus_done;
enum { PHASE_BALLOON, PHASE_LOGDIRTY, PHASE_BOTH };
static int phase; /* set before the threads start */
static bool populated[NDATA]; /* the p2m thread's own record of the data gfns */

static mv_gfn_t priv_l4(unsigned c) { return 10 + c; }
static mv_gfn_t priv_l3(unsigned c) { return 20 + c; }
static mv_gfn_t priv_l2(unsigned c) { return 30 + c; }
static mv_gfn_t shared_l1(unsigned t) { return 100 + t; }
static mv_gfn_t priv_l1(unsigned c, unsigned t) { return 200 + 16 * c + t; }
static uint64_t shared_va(unsigned t, unsigned i) { return (uint64_t)t << 21 | (uint64_t)i << 12; }
static uint64_t priv_va(unsigned t, unsigned i) { return 1ull << 39 | shared_va(t, i); }

struct worker {
    unsigned idx;
    uint64_t seed;
    int line, rc; /* the first failure: source line and return code */
    uint64_t kinds[4], ptes, decreases, cleans, rounds; /* work done, by kind */
};

#define CHECK(w, cond, code)                 \
    do {                                     \
        if (!(cond) && !(w)->line) {         \
            (w)->line = __LINE__;            \
            (w)->rc = (code);                \
        }                                    \
    } while (0)

/* A leaf value a guest might write: mostly a data page, sometimes absent or hostile. */
static uint64_t random_pte(struct th_rng *r)
{
    uint64_t x = th_rand(r);
    if ((x & 15) == 0)
        return 0;
    uint64_t e = (DATA + (x >> 8) % NDATA) << 12 | PTE_P | PTE_U;
    if (x & 0x10)
        e |= PTE_W;
    if (x & 0x60)
        e |= PTE_A;
    if (x & 0x80)
        e |= PTE_D;
    if ((x & 0x700) == 0x700)
        e |= PTE_NX; /* reserved: these vCPUs run without NXE */
    return e;
}

static uint64_t random_va(struct th_rng *r)
{
    unsigned i = (unsigned)th_rand_below(r, ENTRIES);
    if (th_rand_below(r, 3) == 0)
        return priv_va((unsigned)th_rand_below(r, PRIV_TABLES), i);
    return shared_va((unsigned)th_rand_below(r, SH_TABLES), i);
}

/* An L1 entry: one of the shared tables, or one of this vCPU's own. */
static mv_paddr_t random_l1_entry(struct th_rng *r, unsigned c)
{
    unsigned i = (unsigned)th_rand_below(r, ENTRIES);
    mv_gfn_t t = th_rand_below(r, 3) == 0 ? priv_l1(c, (unsigned)th_rand_below(r, PRIV_TABLES))
                                           : shared_l1((unsigned)th_rand_below(r, SH_TABLES));
    return (t << 12) + 8 * i;
}

static void *vcpu_main(void *arg)
{
    struct worker *w = arg;
    unsigned c = w->idx;
    mv_vcpu_t *v = mv_domain_vcpu(d, c);
    struct th_rng r = {.s = w->seed};
    /* Write faults reach the p2m's table cache while logging (see the top of the file). */
    bool write_faults = phase != PHASE_LOGDIRTY || c == 0 || P2M_TOPUP_IS_THREAD_SAFE;
    mv_paddr_t root;
    int rc = mv_shadow_set_cr3(v, G_L4 << 12, &root);
    CHECK(w, rc == 0, rc);
    for (unsigned k = 0; k < ITERS && !w->line; k++) {
        unsigned op = (unsigned)th_rand_below(&r, 32);
        if (op < 14) {
            /* A fault, as the hardware reports it. */
            uint64_t va = random_va(&r);
            uint32_t ec = (uint32_t)th_rand_below(&r, 2) * MV_PFEC_W | MV_PFEC_U;
            if (!write_faults)
                ec &= ~MV_PFEC_W;
            struct mv_shadow_outcome o;
            rc = mv_shadow_page_fault(v, va, ec, 0, &o);
            CHECK(w, rc == 0, rc);
            if (rc)
                continue;
            CHECK(w, o.kind <= MV_SHADOW_MMIO, (int)o.kind);
            /* No leaf names a page table: nothing to emulate. */
            CHECK(w, o.kind != MV_SHADOW_EMULATE, (int)o.kind);
            w->kinds[o.kind & 3]++;
        } else if (op < 22) {
            uint64_t e = random_pte(&r);
            rc = mv_shadow_emulate_write(v, random_l1_entry(&r, c), &e, 8);
            CHECK(w, rc == 0, rc);
            w->ptes++;
        } else if (op < 24) {
            /* LOCK CMPXCHG on an entry another vCPU may be writing or walking. */
            mv_paddr_t gpa = random_l1_entry(&r, c);
            uint64_t exp = 0, want = random_pte(&r);
            rc = mv_shadow_emulate_cmpxchg(v, gpa, &exp, want, 8);
            if (rc == MV_EAGAIN)
                rc = mv_shadow_emulate_cmpxchg(v, gpa, &exp, want, 8);
            CHECK(w, rc == 0 || rc == MV_EAGAIN, rc);
            /* The high half alone (4 bytes), as a 32-bit guest helper would. */
            uint64_t hi = 0;
            rc = mv_shadow_emulate_cmpxchg(v, gpa + 4, &hi, 0, 4);
            CHECK(w, rc == 0 || rc == MV_EAGAIN, rc);
        } else if (op < 25) {
            /* An upper entry: an L2 slot relinked to another L1 table, or cleared. */
            unsigned t = (unsigned)th_rand_below(&r, SH_TABLES);
            uint64_t e = th_rand_below(&r, 4) == 0
                             ? 0
                             : shared_l1((unsigned)th_rand_below(&r, SH_TABLES)) << 12 | TABLE |
                                   PTE_A;
            rc = mv_shadow_emulate_write(v, (G_L2 << 12) + 8 * t, &e, 8);
            CHECK(w, rc == 0, rc);
        } else if (op < 27) {
            rc = mv_shadow_invlpg(v, random_va(&r));
            CHECK(w, rc == 0, rc);
        } else if (op < 28) {
            mv_gfn_t l4 = th_rand_below(&r, 2) ? G_L4 : priv_l4(c);
            rc = mv_shadow_set_cr3(v, l4 << 12, &root);
            CHECK(w, rc == 0, rc);
        } else if (op < 30) {
            /* The emulator writes a data page the balloon may be taking (XSA-219). */
            mv_gfn_t g = DATA + th_rand_below(&r, NDATA);
            uint64_t val = th_rand(&r);
            rc = mv_shadow_emulate_write(v, (g << 12) + 8 * th_rand_below(&r, 512), &val, 8);
            CHECK(w, rc == 0 || rc == MV_EFAULT, rc);
        } else {
            mv_paddr_t gpa;
            uint32_t pfec;
            rc = mv_shadow_gva_to_gpa(v, random_va(&r), MV_PFEC_U, 0, &gpa, &pfec);
            CHECK(w, rc == 0 || rc == MV_EFAULT, rc);
        }
    }
    atomic_fetch_add(&vcpus_done, 1);
    return NULL;
}

static void *p2m_main(void *arg)
{
    struct worker *w = arg;
    struct th_rng r = {.s = w->seed};
    bool balloon = phase != PHASE_LOGDIRTY || P2M_TOPUP_IS_THREAD_SAFE;
    bool toggles = phase == PHASE_LOGDIRTY;
    bool logging = phase != PHASE_BALLOON;
    uint64_t bm[RAM / 64], done, dirty;
    for (unsigned round = 0;
         !w->line && (round < P2M_MIN_ROUNDS || atomic_load(&vcpus_done) < VCPUS); round++) {
        unsigned op = (unsigned)th_rand_below(&r, 64);
        int rc;
        if (op == 63) {
            rc = mv_shadow_blow(d);
            CHECK(w, rc == 0, rc);
        } else if (balloon && (phase == PHASE_BALLOON || op < 40)) {
            unsigned i = (unsigned)th_rand_below(&r, NDATA);
            mv_gfn_t g = DATA + i;
            if (populated[i]) {
                rc = mv_decrease_reservation(d, &g, 1, 0, &done);
                /* MV_EBUSY: an emulated write holds the frame just now. */
                CHECK(w, rc == 0 || rc == MV_EBUSY, rc);
                populated[i] = rc != 0;
                w->decreases += rc == 0;
            } else {
                rc = mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done);
                CHECK(w, rc == 0, rc);
                populated[i] = rc == 0;
            }
        } else if (toggles && op % 16 == 1) {
            rc = logging ? mv_p2m_logdirty_disable(d) : mv_p2m_logdirty_enable(d);
            CHECK(w, rc == 0, rc);
            logging = !logging;
        } else if (logging) {
            rc = mv_p2m_logdirty_peek_and_clean(d, 0, RAM, bm, RAM, &done, &dirty);
            CHECK(w, rc == 0, rc);
            w->cleans++;
        }
        w->rounds++;
    }
    return NULL;
}

/* With the threads gone: every root each vCPU holds, every address, against the oracle. */
static void final_check(void)
{
    struct sh_domain *s = sh_of(d);
    uint64_t checked = 0;
    for (unsigned c = 0; c < VCPUS; c++) {
        mv_vcpu_t *v = mv_domain_vcpu(d, c);
        struct sh_vcpu *sv = shv_of(v);
        struct mv_vcpu_state st = shd_state(v);
        for (unsigned k = 0; k < SH_ROOTS; k++) {
            if (sv->roots[k] == SH_NIL)
                continue;
            struct sh_page *sp = &s->pages[sv->roots[k]];
            assert_int_equal(sp->type, SH_L4);
            mv_paddr_t root = sp->smfn << 12;
            uint64_t cr3 = sp->gfn << 12;
            for (unsigned t = 0; t < SH_TABLES; t++)
                for (unsigned i = 0; i < ENTRIES; i++)
                    checked += shd_agrees(h, d, root, cr3, shared_va(t, i), &st);
            for (unsigned t = 0; t < PRIV_TABLES; t++)
                for (unsigned i = 0; i < ENTRIES; i++)
                    checked += shd_agrees(h, d, root, cr3, priv_va(t, i), &st);
        }
        /* And each address faulted once more on the current root: the outcome the guest's
         * tables call for, then a translation that agrees. */
        mv_paddr_t root = s->pages[sv->cur].smfn << 12;
        uint64_t cr3 = sv->cr3;
        for (unsigned t = 0; t < SH_TABLES; t++)
            for (unsigned i = 0; i < ENTRIES; i++)
                shd_exact(h, v, root, cr3, shared_va(t, i));
        for (unsigned t = 0; t < PRIV_TABLES; t++)
            for (unsigned i = 0; i < ENTRIES; i++)
                shd_exact(h, v, root, cr3, priv_va(t, i));
    }
    assert_true(checked > 0);
}

/* Four threads through one phase, then the checks with the threads gone. */
static void run_phase(int which)
{
    phase = which;
    atomic_store(&vcpus_done, 0);
    pthread_t th[VCPUS + 1];
    struct worker w[VCPUS + 1];
    memset(w, 0, sizeof(w));
    for (unsigned c = 0; c <= VCPUS; c++) {
        w[c].idx = c;
        w[c].seed = 0x5eed0000ull + 16 * (unsigned)which + c;
        assert_int_equal(pthread_create(&th[c], NULL, c < VCPUS ? vcpu_main : p2m_main, &w[c]),
                         0);
    }
    for (unsigned c = 0; c <= VCPUS; c++)
        assert_int_equal(pthread_join(th[c], NULL), 0);
    for (unsigned c = 0; c <= VCPUS; c++)
        if (w[c].line)
            fail_msg("phase %d, %s %u: check at line %d failed (%d, %s)", which,
                     c < VCPUS ? "vcpu" : "p2m", c, w[c].line, w[c].rc,
                     mv_strerror_name(w[c].rc));
    /* Each kind of work happened. */
    uint64_t fixed = 0, ptes = 0;
    for (unsigned c = 0; c < VCPUS; c++) {
        fixed += w[c].kinds[MV_SHADOW_FIXED];
        ptes += w[c].ptes;
    }
    assert_true(fixed > 0 && ptes > 0);
    assert_true(w[VCPUS].rounds >= P2M_MIN_ROUNDS);
    if (which != PHASE_LOGDIRTY)
        assert_true(w[VCPUS].decreases > 0);
    if (which != PHASE_BALLOON)
        assert_true(w[VCPUS].cleans > 0);
    /* (How often the pool evicted depends on the interleaving: test_shadow_hostile counts
     * evictions at the floor deterministically.) */
    struct mv_shadow_stats st = shd_stats(d);
    assert_true(st.pool_frames <= st.budget);
    th_assert_audit_clean(h);
    final_check();
    th_assert_audit_clean(h);
}

static void test_vcpus_and_p2m(void **state)
{
    (void)state;
    struct th_platform *tp;
    h = th_host_create(256 * TH_MiB, NULL, &tp);
    /* Two frames above the floor: evictions all the time. */
    d = shd_domain(h, 1, VCPUS, VCPUS * MV_SHADOW_FLOOR_PER_VCPU + 2, RAM, 64, 0);
    struct th_rng r = {.s = 2024};
    gpoke(d, G_L4, 0, G_L3 << 12 | TABLE);
    gpoke(d, G_L3, 0, G_L2 << 12 | TABLE);
    for (unsigned t = 0; t < SH_TABLES; t++) {
        gpoke(d, G_L2, t, shared_l1(t) << 12 | TABLE);
        for (unsigned i = 0; i < ENTRIES; i++)
            gpoke(d, shared_l1(t), i, random_pte(&r));
    }
    for (unsigned c = 0; c < VCPUS; c++) {
        gpoke(d, priv_l4(c), 0, G_L3 << 12 | TABLE); /* the shared half */
        gpoke(d, priv_l4(c), 1, priv_l3(c) << 12 | TABLE);
        gpoke(d, priv_l3(c), 0, priv_l2(c) << 12 | TABLE);
        for (unsigned t = 0; t < PRIV_TABLES; t++) {
            gpoke(d, priv_l2(c), t, priv_l1(c, t) << 12 | TABLE);
            for (unsigned i = 0; i < ENTRIES; i++)
                gpoke(d, priv_l1(c, t), i, random_pte(&r));
        }
    }
    for (unsigned i = 0; i < NDATA; i++)
        populated[i] = true;
    run_phase(PHASE_BALLOON);
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    run_phase(PHASE_LOGDIRTY);
    /* Logging on, the p2m's table cache full (a mutator tops it up first thing and this one
     * changes nothing), the data region split into 4 KiB leaves since the balloon phase. */
    struct mv_p2m_stats ps = {.size = sizeof(ps)};
    assert_int_equal(mv_p2m_stats(d, &ps), 0);
    if (!ps.logdirty)
        assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    uint64_t done;
    assert_int_equal(mv_p2m_change_type_range(d, DATA, NDATA, MV_P2M_RAM_RO, MV_P2M_RAM_RW,
                                              &done), 0);
    for (unsigned i = 0; i < NDATA; i++) {
        struct mv_p2m_entry e;
        assert_int_equal(mv_p2m_lookup(d, DATA + i, &e), 0);
        assert_int_equal(e.order, 0);
    }
    run_phase(PHASE_BOTH);
    assert_int_equal(mv_p2m_logdirty_disable(d), 0);
    th_assert_audit_clean(h);
    shd_kill(h, d);
    th_host_destroy(h, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vcpus_and_p2m),
    };
    return cmocka_run_group_tests_name("shadow_threads", tests, NULL, NULL);
}
