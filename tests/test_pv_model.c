/*
 * tests/test_pv_model.c - PV validation against a reference model (pv_model.h), a realistic
 * fork/exec/exit workload, and the budget test: a tree mapping 1 GiB pinned with a tiny
 * budget and carried to completion, with allocation failures armed throughout and a
 * validation failure planted at many points of the walk.
 */
#include <stdatomic.h>

#include "pv_model.h"

static void test_model_seed1(void **state)
{
    (void)state;
    pvm_run(0x5eed0001ull, 12000, 3000);
}

static void test_model_seed2(void **state)
{
    (void)state;
    pvm_run(0x5eed0002ull, 12000, 4000);
}

/* ---- fork / exec / exit ------------------------------------------------------------------ */

#define WL_PROCS 12
#define WL_L1S 4
#define WL_PER_L1 64
#define WL_PRIVATE (WL_L1S * WL_PER_L1)

struct proc {
    bool live;
    mv_mfn_t l4, l3, l2, l1[WL_L1S];
    mv_mfn_t data[WL_PRIVATE]; /* frames this process owns (freed at exit) */
    bool mine[WL_PRIVATE];     /* data[i] is its own, not the parent's */
};

struct workload {
    mv_host_t *h;
    mv_domain_t *d;
    mv_vcpu_t *v[2];
    struct proc p[WL_PROCS];
    mv_mfn_t shared[WL_PER_L1]; /* a read-only "libc", mapped by everyone at L1 slot 0 */
    struct th_rng rng;
    unsigned forks, execs, exits, switches;
};

static void wl_tables(struct workload *w, struct proc *p)
{
    p->l4 = pvh_frame(w->d);
    p->l3 = pvh_frame(w->d);
    p->l2 = pvh_frame(w->d);
    pvh_tab(w->h, p->l4)[0] = pte(p->l3, PTE_TABLE);
    pvh_tab(w->h, p->l4)[511] = pte(p->l4, PTE_P); /* the kernel's self-map */
    pvh_tab(w->h, p->l3)[0] = pte(p->l2, PTE_TABLE);
    for (unsigned i = 0; i < WL_L1S; i++) {
        p->l1[i] = pvh_frame(w->d);
        pvh_tab(w->h, p->l2)[i] = pte(p->l1[i], PTE_TABLE);
    }
}

static void wl_exec(struct workload *w, struct proc *p)
{
    memset(p, 0, sizeof(*p));
    p->live = true;
    wl_tables(w, p);
    for (unsigned i = 0; i < WL_PRIVATE; i++) {
        unsigned l = i / WL_PER_L1, k = i % WL_PER_L1;
        if (l == 0) {
            pvh_tab(w->h, p->l1[0])[k] = pte(w->shared[k], PTE_P | PTE_US);
            continue;
        }
        p->data[i] = pvh_frame(w->d);
        p->mine[i] = true;
        pvh_tab(w->h, p->l1[l])[k] = pte(p->data[i], PTE_P | PTE_RW | PTE_US);
    }
    assert_int_equal(pvh_op_all(w->v[0], MV_PV_PIN_L4_TABLE, p->l4, NULL), 0);
    w->execs++;
}

/* Fork: the child maps the parent's frames; writable ones become read-only in both (COW). */
static void wl_fork(struct workload *w, struct proc *parent, struct proc *c)
{
    memset(c, 0, sizeof(*c));
    c->live = true;
    wl_tables(w, c);
    struct mv_pv_mmu_update reqs[WL_PRIVATE];
    uint32_t n = 0;
    for (unsigned i = 0; i < WL_PRIVATE; i++) {
        unsigned l = i / WL_PER_L1, k = i % WL_PER_L1;
        uint64_t e = pvh_tab(w->h, parent->l1[l])[k];
        if (e & PTE_RW) {
            e &= ~PTE_RW;
            reqs[n++] = (struct mv_pv_mmu_update){pvh_ptr(parent->l1[l], k), e};
        }
        pvh_tab(w->h, c->l1[l])[k] = e;
        c->data[i] = parent->data[i];
    }
    uint32_t done = 0, off = 0;
    int rc;
    while ((rc = mv_pv_mmu_update(w->v[0], reqs + off, n - off, &done)) == MV_EAGAIN)
        off += done;
    assert_int_equal(rc, 0);
    assert_int_equal(off + done, n);
    /* The guest flushes after write-protecting. */
    assert_int_equal(pvh_op(w->v[0], MV_PV_TLB_FLUSH_ALL, 0), 0);
    assert_int_equal(pvh_op_all(w->v[0], MV_PV_PIN_L4_TABLE, c->l4, NULL), 0);
    w->forks++;
}

/* A write fault on a COW page: a private copy, mapped writable. */
static void wl_cow(struct workload *w, struct proc *p)
{
    unsigned i = WL_PER_L1 + (unsigned)th_rand_below(&w->rng, WL_PRIVATE - WL_PER_L1);
    if (p->mine[i] && (pvh_tab(w->h, p->l1[i / WL_PER_L1])[i % WL_PER_L1] & PTE_RW))
        return;
    mv_mfn_t n = pvh_frame(w->d);
    assert_int_equal(pvh_upd(w->v[1], pvh_ptr(p->l1[i / WL_PER_L1], i % WL_PER_L1),
                             pte(n, PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D)), 0);
    assert_int_equal(pvh_op(w->v[1], MV_PV_INVLPG_LOCAL, 0x400000ull + i * 4096ull), 0);
    if (p->mine[i])
        assert_int_equal(mv_domain_free_frames(w->d, p->data[i], 0), 0);
    p->data[i] = n;
    p->mine[i] = true;
}

static void wl_exit(struct workload *w, struct proc *p)
{
    for (unsigned c = 0; c < 2; c++) {
        mv_mfn_t k, u;
        assert_int_equal(mv_pv_get_baseptrs(w->v[c], &k, &u), 0);
        if (k == p->l4)
            assert_int_equal(pvh_op_all(w->v[c], MV_PV_NEW_BASEPTR, MV_INVALID_MFN, NULL), 0);
        if (u == p->l4)
            assert_int_equal(pvh_op_all(w->v[c], MV_PV_NEW_USER_BASEPTR, MV_INVALID_MFN, NULL),
                             0);
    }
    assert_int_equal(pvh_op_all(w->v[0], MV_PV_UNPIN_TABLE, p->l4, NULL), 0);
    /* Tables are ordinary frames again: the domain frees them and its private data. */
    mv_mfn_t tabs[3 + WL_L1S] = {p->l4, p->l3, p->l2};
    for (unsigned i = 0; i < WL_L1S; i++)
        tabs[3 + i] = p->l1[i];
    for (unsigned i = 0; i < 3 + WL_L1S; i++) {
        assert_int_equal(pvh_info(w->h, tabs[i]).type_refs, 0);
        assert_int_equal(mv_domain_free_frames(w->d, tabs[i], 0), 0);
    }
    for (unsigned i = 0; i < WL_PRIVATE; i++)
        if (p->mine[i])
            assert_int_equal(mv_domain_free_frames(w->d, p->data[i], 0), 0);
    p->live = false;
    w->exits++;
}

static void test_fork_exec_exit(void **state)
{
    (void)state;
    struct th_platform *tp;
    struct workload *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    w->h = th_host_create(64 * TH_MiB, NULL, &tp);
    w->rng.s = 0xf0e1;
    assert_int_equal(mv_host_drain(w->h), 0);
    struct mv_host_stats hs0 = {.size = sizeof(hs0)};
    assert_int_equal(mv_host_stats(w->h, &hs0), 0);
    w->d = pvh_domain(w->h, 5, 12000, MV_DOMF_LINEAR_PT, 2);
    w->v[0] = mv_domain_vcpu(w->d, 0);
    w->v[1] = mv_domain_vcpu(w->d, 1);
    for (unsigned i = 0; i < WL_PER_L1; i++)
        w->shared[i] = pvh_frame(w->d);
    wl_exec(w, &w->p[0]); /* init */
    for (unsigned step = 0; step < 1500; step++) {
        unsigned a = (unsigned)th_rand_below(&w->rng, WL_PROCS);
        struct proc *p = &w->p[a];
        uint64_t r = th_rand_below(&w->rng, 100);
        if (!p->live) {
            /* fork from a live process, or exec anew */
            unsigned b = (unsigned)th_rand_below(&w->rng, WL_PROCS);
            if (w->p[b].live && r < 70)
                wl_fork(w, &w->p[b], p);
            else
                wl_exec(w, p);
        } else if (r < 35) {
            mv_vcpu_t *v = w->v[th_rand_below(&w->rng, 2)];
            assert_int_equal(pvh_op_all(v, MV_PV_NEW_BASEPTR, p->l4, NULL), 0);
            assert_int_equal(pvh_op_all(v, MV_PV_NEW_USER_BASEPTR, p->l4, NULL), 0);
            w->switches++;
        } else if (r < 75) {
            wl_cow(w, p);
        } else if (a != 0 || r < 80) {
            wl_exit(w, p);
        }
        if (step % 500 == 499)
            th_assert_audit_clean(w->h);
    }
    assert_true(w->forks > 20 && w->execs > 10 && w->exits > 20 && w->switches > 50);
    th_assert_audit_clean(w->h);
    /* Exit every process, then the domain: no frame lost. */
    for (unsigned i = 0; i < WL_PROCS; i++)
        if (w->p[i].live)
            wl_exit(w, &w->p[i]);
    struct mv_pv_stats st = pvh_stats(w->d);
    for (unsigned l = 0; l < 4; l++)
        assert_int_equal(st.tables[l], 0);
    th_assert_audit_clean(w->h);
    pvh_destroy(w->d);
    assert_int_equal(mv_host_drain(w->h), 0);
    struct mv_host_stats hs1 = {.size = sizeof(hs1)};
    assert_int_equal(mv_host_stats(w->h, &hs1), 0);
    assert_int_equal(hs1.free_frames, hs0.free_frames);
    th_host_destroy(w->h, tp);
    free(w);
}

/* ---- 1 GiB with a tiny budget ------------------------------------------------------------- */

#define GIB_DATA (1u << 18)
#define GIB_L1S (GIB_DATA / 512)

struct gib {
    mv_host_t *h;
    struct th_platform *tp;
    mv_domain_t *d;
    mv_vcpu_t *v;
    mv_mfn_t l4, l3, l2, l1[GIB_L1S];
};

/* What the tree's frames look like (descriptors of every table, a sample of data frames). */
static uint64_t gib_digest(struct gib *g)
{
    uint64_t hsh = 0xcbf29ce484222325ull;
    mv_mfn_t roots[3] = {g->l4, g->l3, g->l2};
    for (unsigned i = 0; i < 3 + GIB_L1S; i++) {
        mv_mfn_t m = i < 3 ? roots[i] : g->l1[i - 3];
        struct mv_page_info pi = pvh_info(g->h, m);
        hsh = pvh_fold(hsh, ((uint64_t)pi.refs << 32) | pi.type_refs);
        hsh = pvh_fold(hsh, ((uint64_t)pi.flags << 32) | (pi.type_refs ? pi.type : 0));
        const uint64_t *e = pvh_tab(g->h, m);
        for (unsigned k = 0; k < 512; k += 97)
            hsh = pvh_fold(hsh, e[k]);
    }
    for (unsigned i = 0; i < GIB_L1S; i++) {
        mv_mfn_t m = pv_mfn_of(pvh_tab(g->h, g->l1[i])[i]);
        struct mv_page_info pi = pvh_info(g->h, m);
        hsh = pvh_fold(hsh, ((uint64_t)pi.refs << 32) | pi.type_refs);
    }
    struct mv_pv_stats st = pvh_stats(g->d);
    for (unsigned l = 0; l < 4; l++)
        hsh = pvh_fold(hsh, st.tables[l]);
    hsh = pvh_fold(hsh, st.partial);
    hsh = pvh_fold(hsh, st.pinned);
    return hsh;
}

static void test_budget_1g(void **state)
{
    (void)state;
    struct gib *g = calloc(1, sizeof(*g));
    assert_non_null(g);
    g->h = th_host_create(1280 * TH_MiB, NULL, &g->tp);
    g->d = pvh_domain(g->h, 6, GIB_DATA + GIB_L1S + 8, 0, 1);
    g->v = mv_domain_vcpu(g->d, 0);
    g->l4 = pvh_frame(g->d);
    g->l3 = pvh_frame(g->d);
    g->l2 = pvh_frame(g->d);
    pvh_tab(g->h, g->l4)[0] = pte(g->l3, PTE_TABLE);
    pvh_tab(g->h, g->l3)[0] = pte(g->l2, PTE_TABLE);
    for (unsigned i = 0; i < GIB_L1S; i++) {
        g->l1[i] = pvh_frame(g->d);
        pvh_tab(g->h, g->l2)[i] = pte(g->l1[i], PTE_TABLE);
        mv_mfn_t base;
        assert_int_equal(mv_domain_alloc_frames(g->d, 9, MV_NODE_ANY, 0, &base), 0);
        uint64_t *e = pvh_tab(g->h, g->l1[i]);
        for (unsigned k = 0; k < 512; k++)
            e[k] = pte(base + k, PTE_P | PTE_US | ((k & 3) ? PTE_RW : 0));
    }
    uint64_t before = gib_digest(g);

    /* A validation failure planted at points spread over the walk: each attempt, continued
     * call after call, ends in the error and leaves everything as it was. */
    assert_int_equal(mv_pv_set_budget(g->d, 8192), 0);
    for (unsigned pt = 0; pt < 6; pt++) {
        unsigned l = (unsigned)((uint64_t)GIB_L1S * (2 * pt + 1) / 12), k = (pt * 131) % 512;
        uint64_t *slot = &pvh_tab(g->h, g->l1[l])[k];
        uint64_t saved = *slot;
        *slot = pte(g->l2, PTE_P | PTE_RW); /* a writable mapping of the L2 being validated */
        int rc;
        unsigned calls = 0;
        while ((rc = pvh_op(g->v, MV_PV_PIN_L4_TABLE, g->l4)) == MV_EAGAIN)
            calls++;
        assert_int_equal(rc, MV_EBUSY);
        assert_true(calls >= l / 16);
        pvh_settle(g->v);
        *slot = saved;
        assert_int_equal(gib_digest(g), before);
        if (pt % 3 == 0)
            th_assert_audit_clean(g->h);
    }

    /* The real pin: a tiny budget, allocation failures armed the whole time (validation
     * allocates nothing), audits at points along the way. */
    assert_int_equal(mv_pv_set_budget(g->d, 64), 0);
    int armed = MV_HAVE_FAULT_INJECTION ? 0 : MV_ENOSYS; /* release builds carry no points */
    assert_int_equal(mv_host_inject_failure(g->h, "heap.alloc", 0, UINT64_MAX / 2), armed);
    assert_int_equal(mv_host_inject_failure(g->h, "meta.alloc", 0, UINT64_MAX / 2), armed);
    unsigned calls = 0;
    int rc;
    while ((rc = pvh_op(g->v, MV_PV_PIN_L4_TABLE, g->l4)) == MV_EAGAIN) {
        calls++;
        if (calls % 1024 == 0) {
            struct mv_pv_stats st = pvh_stats(g->d);
            assert_true(st.partial >= 1 && st.partial <= 4);
        }
    }
    assert_int_equal(rc, 0);
    assert_true(calls >= (GIB_DATA + GIB_L1S) / 64);
    assert_int_equal(mv_host_inject_failure(g->h, "heap.alloc", 0, 0), armed);
    assert_int_equal(mv_host_inject_failure(g->h, "meta.alloc", 0, 0), armed);
    th_assert_audit_clean(g->h);
    struct mv_pv_stats st = pvh_stats(g->d);
    assert_int_equal(st.tables[0], GIB_L1S);
    assert_int_equal(st.pinned, 1);
    /* Writable mappings hold writable types. */
    mv_mfn_t d1 = pv_mfn_of(pvh_tab(g->h, g->l1[100])[1]);
    assert_int_equal(pvh_info(g->h, d1).type, MV_PGT_WRITABLE);

    /* Unpin, continued with the same budget until the whole tree is released. */
    assert_int_equal(pvh_op_all(g->v, MV_PV_UNPIN_TABLE, g->l4, &calls), 0);
    assert_true(calls >= (GIB_DATA + GIB_L1S) / 64);
    assert_int_equal(mv_pv_set_budget(g->d, 0), 0);
    assert_int_equal(gib_digest(g), before);
    th_assert_audit_clean(g->h);
    pvh_destroy(g->d);
    th_host_destroy(g->h, g->tp);
    free(g);
}

/* PV state of a domain is metadata: a creation that cannot get it fails cleanly. */
static void test_create_meta_failure(void **state)
{
    (void)state;
    if (!MV_HAVE_FAULT_INJECTION)
        return; /* a release build has no injection points: nothing to plant */
    struct th_platform *tp;
    mv_host_t *h = th_host_create(16 * TH_MiB, NULL, &tp);
    struct mv_domain_config c = {.size = sizeof(c), .domid = 4, .type = MV_DOMAIN_PV,
                                 .paging = MV_PAGING_PV, .nr_vcpus = 3, .max_pages = 64,
                                 .node_affinity = MV_NODE_ANY};
    mv_domain_t *d = NULL;
    int created = 0;
    for (uint64_t skip = 0; skip < 16 && !created; skip++) {
        assert_int_equal(mv_host_inject_failure(h, "meta.alloc", skip, 1), 0);
        int rc = mv_domain_create(h, &c, &d);
        assert_int_equal(mv_host_inject_failure(h, "meta.alloc", 0, 0), 0);
        if (rc == 0)
            created = 1;
        else
            assert_int_equal(rc, MV_ENOMEM);
        th_assert_audit_clean(h);
    }
    assert_true(created);
    mv_mfn_t f = pvh_frame(d);
    assert_int_equal(pvh_op(mv_domain_vcpu(d, 2), MV_PV_PIN_L1_TABLE, f), 0);
    pvh_destroy(d);
    th_host_destroy(h, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_seed1),
        cmocka_unit_test(test_model_seed2),
        cmocka_unit_test(test_fork_exec_exit),
        cmocka_unit_test(test_budget_1g),
        cmocka_unit_test(test_create_meta_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
