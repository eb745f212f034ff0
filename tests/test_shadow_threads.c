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
 * test_floor_churn (further down, with its own comment) runs the same threads with the pool
 * at its floor and out-of-sync L1s that the vCPUs write straight through writable leaves,
 * as their hardware would, while the p2m thread balloons and retypes.
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
#include <sched.h>
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

/* ---- The pool at its floor, out-of-sync L1s written behind the engine's back --------------- */

/*
 * test_floor_churn: the three vCPUs again, with out-of-sync L1s, on a pool at its floor
 * (MV_SHADOW_FLOOR_PER_VCPU frames each), while the fourth thread decreases data gfns,
 * populates them again and retypes ranges of them: ram_rw <-> ram_ro with
 * mv_p2m_change_type_range, ram_rw <-> ram_logdirty with log-dirty on and peek-and-clean.
 *
 * The vCPUs also write their L1 tables as their hardware would: through a window of their
 * address space (L4 slot CH_WIN, mapping gfns 0..255 as data), straight to the frame when
 * the shadow leaf is writable (an out-of-sync L1), else through the fault and the emulator;
 * and they write data pages the same way. A hardware access runs between two increments of
 * its vCPU's hw_seq, and the test's TLB-flush hook waits until every vCPU inside one has
 * left it, as an IPI waits for its acknowledgement: once the engine's flush returns, a leaf
 * it made read-only or removed (a resync, a p2m change, an eviction) takes no more writes.
 *
 * Gating (the comment at the top of the file): every p2m change of the run must leave the
 * p2m's table cache full, since it is refilled with no lock held. All RAM is split into
 * 4 KiB entries and the cache filled before the threads start; data gfns are decreased,
 * populated and retyped 4 KiB at a time (no split, no new table); logging is turned on
 * during the run (a retype in place) but not off (that collapses 2 MiB ranges back, and the
 * next write fault would split one again). The p2m's table and split counts are checked
 * unchanged at the end. With P2M_TOPUP_IS_THREAD_SAFE 1, logging is also turned off and on
 * again during the run.
 *
 * Each vCPU ends with a tail of CH_TAIL actions on four of its own L1s (see ch_vcpu_main),
 * the tails running together once the p2m thread has stopped, so that out-of-sync L1s are
 * left behind the guest with stale leaves present for the final resync points.
 *
 * With the threads gone: each vCPU loads every root it holds (a resync point), and every
 * translation that root holds agrees with the guest's tables through the p2m, each address
 * faults to the outcome the guest's tables call for; no shadow leaf lets the guest write a
 * page-table frame in sync; the pool stayed within its budget; the audit is clean.
 */
#define CH_ITERS 8000u          /* actions per vCPU */
#define CH_TAIL 400u            /* the last of them, with no CR3 load or flush */
#define CH_P2M_MIN_ROUNDS 3000u
#define CH_WIN 2u               /* the window's L4 slot */
#define CH_W3 40ull             /* the window's tables */
#define CH_W2 41ull
#define CH_W1 42ull
#define CH_WIN_GFNS 256u        /* gfns the window maps */
#define CH_RETYPE 8u            /* gfns per retype */

static _Atomic uint64_t hw_seq[VCPUS]; /* odd while the vCPU is inside a hardware access */
static _Atomic unsigned ch_tails;      /* vCPUs at their tail (or stopped): the p2m rests */
static _Atomic bool ch_p2m_resting;    /* the p2m thread has stopped */
static void (*ch_saved_flush)(const struct mv_platform *, const struct mv_flush_request *);

/*
 * A flush completes when no vCPU is still inside an access that began before it. Both sides
 * update hw_seq with read-modify-writes, which are totally ordered: an access that starts
 * after this one reads what it wrote and so sees every shadow entry the engine changed
 * before flushing; an access already under way is waited for, its write done before the
 * engine goes on (reads the frame to resync it, frees it).
 */
static void ch_flush(const struct mv_platform *p, const struct mv_flush_request *req)
{
    ch_saved_flush(p, req);
    for (unsigned c = 0; c < VCPUS; c++) {
        uint64_t x = atomic_fetch_add_explicit(&hw_seq[c], 0, memory_order_acq_rel);
        if (x & 1)
            while (atomic_load_explicit(&hw_seq[c], memory_order_acquire) == x)
                sched_yield();
    }
}

struct ch_worker {
    unsigned idx;
    uint64_t seed;
    int line, rc; /* the first failure: source line and return code */
    uint64_t kinds[MV_SHADOW_NR_KINDS], ptes, direct, trapped, data_direct, gave_up, cr3s;
    uint64_t decreases, retypes, cleans, toggles, rounds;
};

static uint64_t ch_win_va(mv_gfn_t x) { return shd_va(CH_WIN, 0, 0, (unsigned)x); }

/* The hardware's walk of the shadow root (no cmocka assert: this runs on the threads). */
static bool ch_walk(mv_paddr_t root, uint64_t va, mv_mfn_t *mfn, bool *w)
{
    uint64_t t = root;
    bool wr = true;
    for (int lv = 3; lv >= 0; lv--) {
        const uint64_t *tab = mv_frame_va(h, t >> 12);
        if (!tab)
            return false;
        uint64_t e = __atomic_load_n(&tab[(va >> (12 + 9 * lv)) & 511], __ATOMIC_ACQUIRE);
        if (!(e & PTE_P))
            return false;
        wr &= (e & PTE_W) != 0;
        t = e & PTE_ADDR;
    }
    *mfn = t >> 12;
    *w = wr;
    return true;
}

/*
 * The hardware's write of val at va: to the frame when the shadow leaf allows it, else the
 * fault and its outcome. A table write (through the window) may only be fixed or emulated;
 * a data write may also fault into the guest, meet a hole or be denied (ram_ro).
 */
static void ch_hw_write(struct ch_worker *w, mv_vcpu_t *v, mv_paddr_t root, uint64_t va,
                        uint64_t val, bool table)
{
    unsigned c = w->idx;
    for (int tries = 0; tries < 6; tries++) {
        mv_mfn_t m = 0;
        bool wr = false;
        atomic_fetch_add_explicit(&hw_seq[c], 1, memory_order_acq_rel);
        bool present = ch_walk(root, va, &m, &wr);
        uint64_t *p = present && wr ? mv_frame_va(h, m) : NULL;
        if (p)
            __atomic_store_n(&p[(va & 0xff8) / 8], val, __ATOMIC_RELEASE);
        atomic_fetch_add_explicit(&hw_seq[c], 1, memory_order_acq_rel);
        CHECK(w, !present || !wr || p, 0);
        if (p) {
            *(table ? &w->direct : &w->data_direct) += 1;
            return;
        }
        struct mv_shadow_outcome o;
        int rc = mv_shadow_page_fault(v, va, MV_PFEC_W | (present ? MV_PFEC_P : 0), 0, &o);
        CHECK(w, rc == 0 && o.kind < MV_SHADOW_NR_KINDS, rc ? rc : (int)o.kind);
        if (rc || o.kind >= MV_SHADOW_NR_KINDS)
            return;
        w->kinds[o.kind]++;
        if (o.kind == MV_SHADOW_FIXED)
            continue;
        if (!table) {
            /* No data page is a table: never emulated. */
            CHECK(w, o.kind != MV_SHADOW_EMULATE, (int)o.kind);
            return;
        }
        /* The window and the tables never change: the write is the table's, trapped. */
        mv_gfn_t x = (va >> 12) & 511;
        CHECK(w, o.kind == MV_SHADOW_EMULATE && o.gpa == (x << 12 | (va & 0xfff)),
              (int)o.kind);
        if (o.kind != MV_SHADOW_EMULATE)
            return;
        rc = mv_shadow_emulate_write(v, o.gpa & ~7ull, &val, 8);
        CHECK(w, rc == 0, rc);
        w->trapped++;
        return;
    }
    w->gave_up++; /* fixed each time, made read-only again before the retry each time */
}

static void *ch_vcpu_main(void *arg)
{
    struct ch_worker *w = arg;
    unsigned c = w->idx;
    mv_vcpu_t *v = mv_domain_vcpu(d, c);
    struct th_rng r = {.s = w->seed};
    mv_paddr_t root;
    int rc = mv_shadow_set_cr3(v, G_L4 << 12, &root);
    CHECK(w, rc == 0, rc);
    bool tail = false;
    for (unsigned k = 0; k < CH_ITERS && !w->line; k++) {
        unsigned op = (unsigned)th_rand_below(&r, 40);
        if (!tail && k >= CH_ITERS - CH_TAIL) {
            /* All the tails run together, once the p2m thread has stopped. */
            tail = true;
            atomic_fetch_add(&ch_tails, 1);
            while (!atomic_load(&ch_p2m_resting) || atomic_load(&ch_tails) < VCPUS)
                sched_yield();
            rc = mv_shadow_set_cr3(v, priv_l4(c) << 12, &root); /* its own process */
            CHECK(w, rc == 0, rc);
        }
        if (tail) {
            /*
             * The tail: a process filling in its mappings and touching them - four of this
             * vCPU's L1s written through the window (they stay out of sync: fewer than its
             * budget) and their addresses faulted, with no CR3 load or flush. Out-of-sync
             * L1s are left behind the guest, their stale leaves present, for the final CR3
             * loads to bring back in sync.
             */
            unsigned t = (unsigned)th_rand_below(&r, 4), i = (unsigned)th_rand_below(&r, ENTRIES);
            if (op < 16) {
                struct mv_shadow_outcome o;
                rc = mv_shadow_page_fault(v, priv_va(t, i), MV_PFEC_U, 0, &o);
                CHECK(w, rc == 0 && (o.kind == MV_SHADOW_FIXED || o.kind == MV_SHADOW_INJECT ||
                                     o.kind == MV_SHADOW_MMIO),
                      rc ? rc : (int)o.kind);
            } else if (op < 36) {
                ch_hw_write(w, v, root, ch_win_va(priv_l1(c, t)) + 8 * i, random_pte(&r), true);
                w->ptes++;
            } else {
                ch_hw_write(w, v, root, priv_va(t, i) + 8 * th_rand_below(&r, 512), th_rand(&r),
                            false);
            }
            continue;
        }
        if (op < 12) {
            uint64_t va = random_va(&r);
            uint32_t ec = (uint32_t)th_rand_below(&r, 2) * MV_PFEC_W | MV_PFEC_U;
            struct mv_shadow_outcome o;
            rc = mv_shadow_page_fault(v, va, ec, 0, &o);
            CHECK(w, rc == 0, rc);
            if (rc)
                continue;
            /* No leaf names a page table; only a write to ram_ro is denied. */
            CHECK(w, o.kind < MV_SHADOW_NR_KINDS && o.kind != MV_SHADOW_EMULATE, (int)o.kind);
            CHECK(w, o.kind != MV_SHADOW_DENIED || (ec & MV_PFEC_W), (int)o.kind);
            if (o.kind < MV_SHADOW_NR_KINDS)
                w->kinds[o.kind]++;
        } else if (op < 18) {
            uint64_t e = random_pte(&r);
            rc = mv_shadow_emulate_write(v, random_l1_entry(&r, c), &e, 8);
            CHECK(w, rc == 0, rc);
            w->ptes++;
        } else if (op < 26) {
            /* An L1 entry written through the window, as the guest's kernel would. */
            mv_paddr_t gpa = random_l1_entry(&r, c);
            ch_hw_write(w, v, root, ch_win_va(gpa >> 12) + (gpa & 0xfff), random_pte(&r), true);
            w->ptes++;
        } else if (op < 28) {
            mv_paddr_t gpa = random_l1_entry(&r, c);
            uint64_t exp = 0, want = random_pte(&r);
            rc = mv_shadow_emulate_cmpxchg(v, gpa, &exp, want, 8);
            if (rc == MV_EAGAIN)
                rc = mv_shadow_emulate_cmpxchg(v, gpa, &exp, want, 8);
            CHECK(w, rc == 0 || rc == MV_EAGAIN, rc);
        } else if (op < 29) {
            unsigned t = (unsigned)th_rand_below(&r, SH_TABLES);
            uint64_t e = th_rand_below(&r, 4) == 0
                             ? 0
                             : shared_l1((unsigned)th_rand_below(&r, SH_TABLES)) << 12 | TABLE |
                                   PTE_A;
            rc = mv_shadow_emulate_write(v, (G_L2 << 12) + 8 * t, &e, 8);
            CHECK(w, rc == 0, rc);
        } else if (op < 32) {
            /* A data page written through whatever the guest's entries map there. */
            uint64_t va = random_va(&r) + 8 * th_rand_below(&r, 512);
            ch_hw_write(w, v, root, va, th_rand(&r), false);
        } else if (op < 35) {
            rc = mv_shadow_invlpg(v, random_va(&r));
            CHECK(w, rc == 0, rc);
        } else if (op < 37) {
            mv_gfn_t l4 = th_rand_below(&r, 2) ? G_L4 : priv_l4(c);
            rc = mv_shadow_set_cr3(v, l4 << 12, &root);
            CHECK(w, rc == 0, rc);
            w->cr3s++;
        } else if (op < 38) {
            rc = mv_shadow_flush(v);
            CHECK(w, rc == 0, rc);
        } else {
            mv_paddr_t gpa;
            uint32_t pfec;
            rc = mv_shadow_gva_to_gpa(v, random_va(&r), MV_PFEC_U, 0, &gpa, &pfec);
            CHECK(w, rc == 0 || rc == MV_EFAULT, rc);
        }
    }
    if (!tail)
        atomic_fetch_add(&ch_tails, 1); /* stopped by a failed check */
    return NULL;
}

static void *ch_p2m_main(void *arg)
{
    struct ch_worker *w = arg;
    struct th_rng r = {.s = w->seed};
    bool logging = false;
    uint64_t bm[RAM / 64], done, dirty;
    for (unsigned round = 0;
         !w->line && (round < CH_P2M_MIN_ROUNDS || atomic_load(&ch_tails) < VCPUS); round++) {
        unsigned op = (unsigned)th_rand_below(&r, 64);
        int rc;
        if (!logging && (round == CH_P2M_MIN_ROUNDS / 4 ||
                         (P2M_TOPUP_IS_THREAD_SAFE && op == 62 && round > CH_P2M_MIN_ROUNDS / 4))) {
            rc = mv_p2m_logdirty_enable(d);
            CHECK(w, rc == 0, rc);
            logging = rc == 0;
            w->toggles++;
        } else if (P2M_TOPUP_IS_THREAD_SAFE && logging && op == 62) {
            rc = mv_p2m_logdirty_disable(d);
            CHECK(w, rc == 0, rc);
            logging = rc != 0;
            w->toggles++;
        } else if (op == 63 && th_rand_below(&r, 8) == 0) {
            rc = mv_shadow_blow(d);
            CHECK(w, rc == 0, rc);
        } else if (op < 24) {
            unsigned i = (unsigned)th_rand_below(&r, NDATA);
            mv_gfn_t g = DATA + i;
            if (populated[i]) {
                rc = mv_decrease_reservation(d, &g, 1, 0, &done);
                CHECK(w, rc == 0 || rc == MV_EBUSY, rc); /* EBUSY: a hold just now */
                populated[i] = rc != 0;
                w->decreases += rc == 0;
            } else {
                rc = mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done);
                CHECK(w, rc == 0, rc);
                populated[i] = rc == 0;
            }
        } else if (op < 44) {
            /* A range retyped: ram_rw or ram_logdirty to ram_ro, or back (to ram_logdirty
             * while logging: nothing becomes writable without a fault). */
            static const unsigned tr[3][2] = {{MV_P2M_RAM_RW, MV_P2M_RAM_RO},
                                              {MV_P2M_RAM_RO, MV_P2M_RAM_RW},
                                              {MV_P2M_RAM_LOGDIRTY, MV_P2M_RAM_RO}};
            unsigned k = (unsigned)th_rand_below(&r, 3);
            mv_gfn_t g = DATA + CH_RETYPE * th_rand_below(&r, NDATA / CH_RETYPE);
            rc = mv_p2m_change_type_range(d, g, CH_RETYPE, tr[k][0], tr[k][1], &done);
            CHECK(w, rc == 0, rc);
            w->retypes++;
        } else if (logging) {
            rc = mv_p2m_logdirty_peek_and_clean(d, 0, RAM, bm, RAM, &done, &dirty);
            CHECK(w, rc == 0, rc);
            w->cleans++;
        }
        w->rounds++;
    }
    atomic_store(&ch_p2m_resting, true);
    return NULL;
}

/* Every translation every root of every vCPU holds, once that root is loaded again. */
static void ch_final_check(void)
{
    struct sh_domain *s = sh_of(d);
    uint64_t translations = 0;
    for (unsigned c = 0; c < VCPUS; c++) {
        mv_vcpu_t *v = mv_domain_vcpu(d, c);
        struct sh_vcpu *sv = shv_of(v);
        struct mv_vcpu_state st = shd_state(v);
        mv_gfn_t held[SH_ROOTS];
        unsigned n = 0;
        for (unsigned k = 0; k < SH_ROOTS; k++)
            if (sv->roots[k] != SH_NIL)
                held[n++] = s->pages[sv->roots[k]].gfn;
        assert_true(n > 0);
        mv_paddr_t root = 0;
        if (c == 0) {
            /* A flush is a resync point too (vCPU 0's tail left its own L1s out of sync,
             * which only its root reaches; the others go straight to CR3 loads). */
            assert_int_equal(mv_shadow_flush(v), 0);
            root = s->pages[sv->cur].smfn << 12;
            translations += shd_all_agree(h, d, root, sv->cr3, &st);
            shd_no_writable_table(h, d);
        }
        for (unsigned k = 0; k < n; k++) {
            assert_int_equal(mv_shadow_set_cr3(v, held[k] << 12, &root), 0);
            translations += shd_all_agree(h, d, root, held[k] << 12, &st);
            shd_no_writable_table(h, d);
        }
        /* Each address faulted once more: the outcome the guest's tables call for. */
        uint64_t cr3 = held[n - 1] << 12;
        for (unsigned t = 0; t < SH_TABLES; t++)
            for (unsigned i = 0; i < ENTRIES; i++)
                shd_exact(h, v, root, cr3, shared_va(t, i));
        for (unsigned t = 0; t < PRIV_TABLES; t++)
            for (unsigned i = 0; i < ENTRIES; i++)
                shd_exact(h, v, root, cr3, priv_va(t, i));
        translations += shd_all_agree(h, d, root, cr3, &st);
    }
    assert_true(translations > 0);
}

static void test_floor_churn(void **state)
{
    (void)state;
    struct th_platform *tp;
    h = th_host_create(256 * TH_MiB, NULL, &tp);
    ch_saved_flush = tp->p.tlb_flush;
    tp->p.tlb_flush = ch_flush;
    d = shd_domain(h, 2, VCPUS, VCPUS * MV_SHADOW_FLOOR_PER_VCPU, RAM, 64, 0);
    assert_int_equal(sh_of(d)->oos_budget, MV_SHADOW_OOS_DEFAULT);
    struct th_rng r = {.s = 0xf100};
    gpoke(d, G_L4, 0, G_L3 << 12 | TABLE);
    gpoke(d, G_L3, 0, G_L2 << 12 | TABLE);
    for (unsigned t = 0; t < SH_TABLES; t++) {
        gpoke(d, G_L2, t, shared_l1(t) << 12 | TABLE);
        for (unsigned i = 0; i < ENTRIES; i++)
            gpoke(d, shared_l1(t), i, random_pte(&r));
    }
    for (unsigned c = 0; c < VCPUS; c++) {
        gpoke(d, priv_l4(c), 0, G_L3 << 12 | TABLE);
        gpoke(d, priv_l4(c), 1, priv_l3(c) << 12 | TABLE);
        gpoke(d, priv_l4(c), CH_WIN, CH_W3 << 12 | TABLE);
        gpoke(d, priv_l3(c), 0, priv_l2(c) << 12 | TABLE);
        for (unsigned t = 0; t < PRIV_TABLES; t++) {
            gpoke(d, priv_l2(c), t, priv_l1(c, t) << 12 | TABLE);
            for (unsigned i = 0; i < ENTRIES; i++)
                gpoke(d, priv_l1(c, t), i, random_pte(&r));
        }
    }
    gpoke(d, G_L4, CH_WIN, CH_W3 << 12 | TABLE);
    gpoke(d, CH_W3, 0, CH_W2 << 12 | TABLE);
    gpoke(d, CH_W2, 0, CH_W1 << 12 | TABLE);
    for (mv_gfn_t x = 0; x < CH_WIN_GFNS; x++)
        gpoke(d, CH_W1, (unsigned)x, x << 12 | TABLE | PTE_A | PTE_D);
    for (unsigned i = 0; i < NDATA; i++)
        populated[i] = true;
    /* Every 2 MiB extent split into 4 KiB entries (one gfn retyped and back), then a
     * change that changes nothing, which fills the table cache first thing. */
    uint64_t done;
    for (mv_gfn_t g = 0; g < RAM; g += 512) {
        assert_int_equal(mv_p2m_change_type_range(d, g, 1, MV_P2M_RAM_RW, MV_P2M_RAM_RO, &done),
                         0);
        assert_int_equal(mv_p2m_change_type_range(d, g, 1, MV_P2M_RAM_RO, MV_P2M_RAM_RW, &done),
                         0);
    }
    assert_int_equal(mv_p2m_change_type_range(d, 0, RAM, MV_P2M_RAM_RO, MV_P2M_RAM_RW, &done),
                     0);
    assert_true(mv__p2m_cache_has(p2m_of(d), 1)); /* the cache holds frames */
    for (mv_gfn_t g = 0; g < RAM; g++) {
        struct mv_p2m_entry e;
        assert_int_equal(mv_p2m_lookup(d, g, &e), 0);
        assert_int_equal(e.order, 0);
    }
    struct mv_p2m_stats ps0 = {.size = sizeof(ps0)};
    assert_int_equal(mv_p2m_stats(d, &ps0), 0);

    atomic_store(&ch_tails, 0);
    atomic_store(&ch_p2m_resting, false);
    pthread_t th[VCPUS + 1];
    static struct ch_worker w[VCPUS + 1];
    memset(w, 0, sizeof(w));
    for (unsigned c = 0; c <= VCPUS; c++) {
        w[c].idx = c;
        w[c].seed = 0xc4a77e00ull + c;
        assert_int_equal(pthread_create(&th[c], NULL, c < VCPUS ? ch_vcpu_main : ch_p2m_main,
                                        &w[c]), 0);
    }
    for (unsigned c = 0; c <= VCPUS; c++)
        assert_int_equal(pthread_join(th[c], NULL), 0);
    for (unsigned c = 0; c <= VCPUS; c++)
        if (w[c].line)
            fail_msg("%s %u: check at line %d failed (%d, %s)", c < VCPUS ? "vcpu" : "p2m", c,
                     w[c].line, w[c].rc, mv_strerror_name(w[c].rc));

    /* Nothing took a table from the p2m's cache while the threads ran (the gating). */
    struct mv_p2m_stats ps1 = {.size = sizeof(ps1)};
    assert_int_equal(mv_p2m_stats(d, &ps1), 0);
    if (!P2M_TOPUP_IS_THREAD_SAFE) {
        assert_int_equal(ps1.splinters, ps0.splinters);
        assert_int_equal(ps1.table_frames, ps0.table_frames);
    }
    /* Each kind of work happened. */
    uint64_t direct = 0, trapped = 0, data = 0, gave_up = 0, fixed = 0, denied = 0;
    for (unsigned c = 0; c < VCPUS; c++) {
        direct += w[c].direct;
        trapped += w[c].trapped;
        data += w[c].data_direct;
        gave_up += w[c].gave_up;
        fixed += w[c].kinds[MV_SHADOW_FIXED];
        denied += w[c].kinds[MV_SHADOW_DENIED];
    }
    const struct ch_worker *p = &w[VCPUS];
    uint64_t cr3s = w[0].cr3s + w[1].cr3s + w[2].cr3s;
    assert_true(direct > 0 && trapped > 0 && data > 0 && fixed > 0 && denied > 0 && cr3s > 0);
    assert_true(p->decreases > 0 && p->retypes > 0 && p->cleans > 0 && p->toggles > 0);
    assert_true(w[VCPUS].rounds >= CH_P2M_MIN_ROUNDS);
    struct mv_shadow_stats st = shd_stats(d);
    assert_int_equal(st.budget, VCPUS * MV_SHADOW_FLOOR_PER_VCPU);
    assert_true(st.pool_frames <= st.budget);
    assert_true(st.unsyncs > 0 && st.resyncs > 0 && st.evictions > 0);
    assert_true(st.unsyncs >= st.resyncs + st.oos_pages);
    print_message("floor churn: L1 writes %llu direct, %llu trapped, %llu given up; data "
                  "writes %llu direct; decreases %llu, retypes %llu, cleans %llu; unsyncs %llu "
                  "resyncs %llu fixed %llu evictions %llu\n",
                  (unsigned long long)direct, (unsigned long long)trapped,
                  (unsigned long long)gave_up, (unsigned long long)data,
                  (unsigned long long)p->decreases, (unsigned long long)p->retypes,
                  (unsigned long long)p->cleans, (unsigned long long)st.unsyncs,
                  (unsigned long long)st.resyncs, (unsigned long long)st.resync_fixed,
                  (unsigned long long)st.evictions);
    th_assert_audit_clean(h);
    ch_final_check();
    th_assert_audit_clean(h);
    struct mv_p2m_stats ps2 = {.size = sizeof(ps2)};
    assert_int_equal(mv_p2m_stats(d, &ps2), 0);
    if (ps2.logdirty)
        assert_int_equal(mv_p2m_logdirty_disable(d), 0);
    th_assert_audit_clean(h);
    shd_kill(h, d);
    tp->p.tlb_flush = ch_saved_flush;
    th_host_destroy(h, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vcpus_and_p2m),
        cmocka_unit_test(test_floor_churn),
    };
    return cmocka_run_group_tests_name("shadow_threads", tests, NULL, NULL);
}
