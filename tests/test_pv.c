/*
 * tests/test_pv.c - PV page-table updates: the rules that let things through, references
 * and types taken and dropped, pinning, base pointers, devalidation, the fast path, linear
 * entries, preemption and continuation, flushes, destroy and ballooning (XSA-252).
 */
#include <pthread.h>
#include <stdatomic.h>

#include "mm-internal.h"
#include "pv_helpers.h"

static mv_host_t *h;
static struct th_platform *tp;
static mv_domain_t *d;
static mv_vcpu_t *v;

static int setup(void **state)
{
    (void)state;
    h = th_host_create(64 * TH_MiB, NULL, &tp);
    d = pvh_domain(h, 1, 8192, MV_DOMF_LINEAR_PT, 2);
    v = mv_domain_vcpu(d, 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    th_assert_audit_clean(h);
    pvh_destroy(d);
    th_host_destroy(h, tp);
    return 0;
}

static void test_pin_l1_refs(void **state)
{
    (void)state;
    mv_mfn_t l1 = pvh_frame(d), ro = pvh_frame(d), rw = pvh_frame(d);
    pvh_tab(h, l1)[0] = pte(ro, PTE_P);
    pvh_tab(h, l1)[1] = pte(rw, PTE_P | PTE_RW);
    pvh_tab(h, l1)[2] = pte(rw, PTE_P | PTE_RW);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L1_TABLE, l1), 0);
    struct mv_page_info pi = pvh_info(h, l1);
    assert_int_equal(pi.type, MV_PGT_L1);
    assert_int_equal(pi.type_refs, 1);
    assert_int_equal(pi.refs, 2);
    assert_true(pi.flags & MV_PAGEF_PINNED);
    assert_true(pi.flags & MV_PAGEF_VALIDATED);
    pi = pvh_info(h, ro);
    assert_int_equal(pi.refs, 2);
    assert_int_equal(pi.type_refs, 0);
    pi = pvh_info(h, rw);
    assert_int_equal(pi.refs, 3);
    assert_int_equal(pi.type, MV_PGT_WRITABLE);
    assert_int_equal(pi.type_refs, 2);
    th_assert_audit_clean(h);
    struct mv_pv_stats st = pvh_stats(d);
    assert_int_equal(st.tables[0], 1);
    assert_int_equal(st.pinned, 1);
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, l1), 0);
    assert_int_equal(pvh_info(h, l1).refs, 1);
    assert_int_equal(pvh_info(h, l1).type_refs, 0);
    assert_int_equal(pvh_info(h, rw).refs, 1);
    assert_int_equal(pvh_info(h, rw).type_refs, 0);
    assert_int_equal(pvh_stats(d).tables[0], 0);
    /* Devalidated: the frame can be written as an ordinary page again. */
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 5), 0x1234000), 0);
    assert_int_equal(pvh_tab(h, l1)[5], 0x1234000);
    th_assert_audit_clean(h);
}

static void test_l1_update_moves_references(void **state)
{
    (void)state;
    mv_mfn_t l1 = pvh_frame(d), a = pvh_frame(d), b = pvh_frame(d);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L1_TABLE, l1), 0);
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 7), pte(a, PTE_P | PTE_RW)), 0);
    assert_int_equal(pvh_info(h, a).type, MV_PGT_WRITABLE);
    assert_int_equal(pvh_info(h, a).refs, 2);
    /* Remap to b: b gains, a loses. */
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 7), pte(b, PTE_P | PTE_RW)), 0);
    assert_int_equal(pvh_info(h, a).refs, 1);
    assert_int_equal(pvh_info(h, a).type_refs, 0);
    assert_int_equal(pvh_info(h, b).refs, 2);
    /* Read-only now: the writable type goes, the reference stays. */
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 7), pte(b, PTE_P)), 0);
    assert_int_equal(pvh_info(h, b).refs, 2);
    assert_int_equal(pvh_info(h, b).type_refs, 0);
    /* A/D-only changes take the fast path. */
    uint64_t fast0 = pvh_stats(d).fast_updates;
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 7), pte(b, PTE_P | PTE_A | PTE_D)), 0);
    assert_int_equal(pvh_stats(d).fast_updates, fast0 + 1);
    assert_int_equal(pvh_info(h, b).refs, 2);
    /* Unmap. */
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 7), 0), 0);
    assert_int_equal(pvh_info(h, b).refs, 1);
    th_assert_audit_clean(h);
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, l1), 0);
    th_assert_audit_clean(h);
}

static void test_four_levels_and_base(void **state)
{
    (void)state;
    mv_mfn_t data[600];
    for (unsigned i = 0; i < 600; i++)
        data[i] = pvh_frame(d);
    struct pvh_space s;
    pvh_build(h, d, &s, data, 600, true);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L4_TABLE, s.l4), 0);
    struct mv_pv_stats st = pvh_stats(d);
    assert_int_equal(st.tables[0], 2);
    assert_int_equal(st.tables[1], 1);
    assert_int_equal(st.tables[2], 1);
    assert_int_equal(st.tables[3], 1);
    assert_int_equal(pvh_info(h, s.l2).type, MV_PGT_L2);
    assert_int_equal(pvh_info(h, s.l1[1]).type, MV_PGT_L1);
    th_assert_audit_clean(h);
    /* The base pointer takes another L4 reference; switching away drops it. */
    assert_int_equal(pvh_op(v, MV_PV_NEW_BASEPTR, s.l4), 0);
    assert_int_equal(pvh_info(h, s.l4).type_refs, 2);
    mv_mfn_t k, u;
    assert_int_equal(mv_pv_get_baseptrs(v, &k, &u), 0);
    assert_int_equal(k, s.l4);
    assert_int_equal(u, MV_INVALID_MFN);
    assert_int_equal(pvh_op(v, MV_PV_NEW_USER_BASEPTR, s.l4), 0);
    assert_int_equal(pvh_info(h, s.l4).type_refs, 3);
    /* Unpinned but still the base: stays validated. */
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, s.l4), 0);
    assert_int_equal(pvh_stats(d).tables[3], 1);
    assert_int_equal(pvh_op(v, MV_PV_NEW_USER_BASEPTR, MV_INVALID_MFN), 0);
    assert_int_equal(pvh_op(v, MV_PV_NEW_BASEPTR, MV_INVALID_MFN), 0);
    st = pvh_stats(d);
    for (unsigned l = 0; l < 4; l++)
        assert_int_equal(st.tables[l], 0);
    assert_int_equal(pvh_info(h, data[599]).refs, 1);
    th_assert_audit_clean(h);
}

static void test_upper_update_validates_subtree(void **state)
{
    (void)state;
    mv_mfn_t l4 = pvh_frame(d), l3 = pvh_frame(d), l2 = pvh_frame(d), l1 = pvh_frame(d);
    mv_mfn_t x = pvh_frame(d);
    pvh_tab(h, l1)[3] = pte(x, PTE_P | PTE_RW);
    pvh_tab(h, l2)[0] = pte(l1, PTE_TABLE);
    pvh_tab(h, l3)[0] = pte(l2, PTE_TABLE);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L4_TABLE, l4), 0);
    /* Hooking the L3 in validates L3, L2 and L1 below it. */
    assert_int_equal(pvh_upd(v, pvh_ptr(l4, 1), pte(l3, PTE_TABLE)), 0);
    assert_true(pvh_info(h, l1).flags & MV_PAGEF_VALIDATED);
    assert_int_equal(pvh_info(h, x).type, MV_PGT_WRITABLE);
    th_assert_audit_clean(h);
    /* A table in use cannot be written as a page any more. */
    mv_mfn_t l1b = pvh_frame(d);
    pvh_tab(h, l2)[1] = pte(l1b, PTE_TABLE);
    assert_int_equal(pvh_tab(h, l2)[1], pte(l1b, PTE_TABLE)); /* raw, by the test itself */
    pvh_tab(h, l2)[1] = 0;
    /* Unhooking releases the whole subtree. */
    assert_int_equal(pvh_upd(v, pvh_ptr(l4, 1), 0), 0);
    assert_int_equal(pvh_info(h, l1).type_refs, 0);
    assert_int_equal(pvh_info(h, x).type_refs, 0);
    assert_int_equal(pvh_info(h, l3).refs, 1);
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, l4), 0);
    th_assert_audit_clean(h);
}

static void test_linear_entries(void **state)
{
    (void)state;
    mv_mfn_t l4 = pvh_frame(d), other = pvh_frame(d);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L4_TABLE, l4), 0);
    /* A read-only self-map takes nothing. */
    assert_int_equal(pvh_upd(v, pvh_ptr(l4, 300), pte(l4, PTE_P | PTE_A)), 0);
    assert_int_equal(pvh_info(h, l4).refs, 2);
    assert_int_equal(pvh_info(h, l4).type_refs, 1);
    /* A read-only linear entry to another validated L4. */
    assert_int_equal(pvh_op(v, MV_PV_PIN_L4_TABLE, other), 0);
    assert_int_equal(pvh_upd(v, pvh_ptr(l4, 301), pte(other, PTE_P)), 0);
    assert_int_equal(pvh_info(h, other).type_refs, 2);
    th_assert_audit_clean(h);
    /* Unpinning `other` keeps it validated through the linear entry. */
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, other), 0);
    assert_true(pvh_info(h, other).flags & MV_PAGEF_VALIDATED);
    th_assert_audit_clean(h);
    /* The self-mapped table still devalidates when unpinned: the linear entry's release
     * devalidates `other` too. */
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, l4), 0);
    assert_int_equal(pvh_info(h, l4).type_refs, 0);
    assert_int_equal(pvh_info(h, other).type_refs, 0);
    assert_int_equal(pvh_info(h, l4).refs, 1);
    th_assert_audit_clean(h);
}

static void test_plain_write(void **state)
{
    (void)state;
    mv_mfn_t f = pvh_frame(d);
    uint64_t w0 = pvh_stats(d).plain_writes;
    assert_int_equal(pvh_upd(v, pvh_ptr(f, 9), 0xdeadbeefull), 0);
    assert_int_equal(pvh_tab(h, f)[9], 0xdeadbeefull);
    assert_int_equal(pvh_stats(d).plain_writes, w0 + 1);
    assert_int_equal(pvh_info(h, f).refs, 1);
    assert_int_equal(pvh_info(h, f).type_refs, 0);
}

/* A tree mapping `n` frames read-only, L4 at the root. */
static struct pvh_space *big_space(mv_mfn_t **data_out, unsigned n)
{
    static struct pvh_space s;
    mv_mfn_t *data = test_malloc(n * sizeof(*data));
    for (unsigned i = 0; i < n; i++)
        data[i] = pvh_frame(d);
    pvh_build(h, d, &s, data, n, false);
    *data_out = data;
    return &s;
}

static void test_preempted_pin_continues(void **state)
{
    (void)state;
    mv_mfn_t *data;
    struct pvh_space *s = big_space(&data, 2048);
    assert_int_equal(mv_pv_set_budget(d, 300), 0);
    unsigned calls = 0;
    int rc;
    for (;;) {
        rc = pvh_op(v, MV_PV_PIN_L4_TABLE, s->l4);
        calls++;
        if (rc != MV_EAGAIN)
            break;
        /* Consistent between slices (I8). */
        if (calls % 3 == 1) {
            th_assert_audit_clean(h);
            assert_true(pvh_info(h, s->l4).flags & MV_PAGEF_PARTIAL);
        }
    }
    assert_int_equal(rc, 0);
    assert_true(calls >= 2048 / 300);
    assert_true(pvh_info(h, s->l4).flags & MV_PAGEF_PINNED);
    assert_int_equal(pvh_stats(d).tables[0], 4);
    th_assert_audit_clean(h);
    /* Unpin: the release is deferred and settled by the next calls. */
    struct mv_pv_mmuext_op o = {.cmd = MV_PV_UNPIN_TABLE, .arg = s->l4};
    uint32_t done;
    assert_int_equal(mv_pv_mmuext_op(v, &o, 1, &done), MV_EAGAIN);
    assert_int_equal(done, 1);
    th_assert_audit_clean(h);
    pvh_settle(v);
    assert_int_equal(pvh_stats(d).tables[0], 0);
    assert_int_equal(pvh_stats(d).partial, 0);
    assert_int_equal(pvh_info(h, data[2047]).refs, 1);
    assert_int_equal(mv_pv_set_budget(d, 0), 0);
    th_assert_audit_clean(h);
    test_free(data);
}

static void test_abandoned_continuation_rolls_back(void **state)
{
    (void)state;
    mv_mfn_t *data;
    struct pvh_space *s = big_space(&data, 1024);
    assert_int_equal(mv_pv_set_budget(d, 200), 0);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L4_TABLE, s->l4), MV_EAGAIN);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L4_TABLE, s->l4), MV_EAGAIN);
    /* Another vCPU cannot take the partial table. */
    assert_int_equal(pvh_op(mv_domain_vcpu(d, 1), MV_PV_PIN_L4_TABLE, s->l4), MV_EBUSY);
    /* Something else on this vCPU: the validation is rolled back first. */
    mv_mfn_t f = pvh_frame(d);
    int rc;
    while ((rc = pvh_op(v, MV_PV_PIN_L1_TABLE, f)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
    assert_int_equal(pvh_info(h, s->l4).type_refs, 0);
    assert_int_equal(pvh_info(h, s->l1[0]).type_refs, 0);
    assert_int_equal(pvh_info(h, data[0]).refs, 1);
    assert_int_equal(pvh_stats(d).partial, 0);
    /* An empty L1 is 512 entries to release: more than the budget, so it continues. */
    unsigned calls;
    assert_int_equal(pvh_op_all(v, MV_PV_UNPIN_TABLE, f, &calls), 0);
    assert_int_equal(calls, 3);
    assert_int_equal(mv_pv_set_budget(d, 0), 0);
    th_assert_audit_clean(h);
    test_free(data);
}

static void test_flush_ops(void **state)
{
    (void)state;
    uint64_t f0 = atomic_load(&tp->flushes);
    struct mv_pv_mmuext_op ops[] = {
        {.cmd = MV_PV_TLB_FLUSH_LOCAL},
        {.cmd = MV_PV_TLB_FLUSH_ALL},
        {.cmd = MV_PV_INVLPG_LOCAL, .arg = 0x7fff12345000ull},
        {.cmd = MV_PV_INVLPG_ALL, .arg = 0xffff800000001000ull},
    };
    uint32_t done;
    assert_int_equal(mv_pv_mmuext_op(v, ops, 4, &done), 0);
    assert_int_equal(done, 4);
    assert_int_equal(atomic_load(&tp->flushes), f0 + 4);
    assert_int_equal(pvh_stats(d).flushes >= 4, 1);
}

/* The flush clock: a frame unmapped writable then pinned as a table is flushed first. */
static void test_flush_before_retype(void **state)
{
    (void)state;
    mv_mfn_t l1 = pvh_frame(d), x = pvh_frame(d);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L1_TABLE, l1), 0);
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 0), pte(x, PTE_P | PTE_RW)), 0);
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 0), 0), 0);
    uint64_t f0 = atomic_load(&tp->flushes);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L1_TABLE, x), 0);
    assert_int_equal(atomic_load(&tp->flushes), f0 + 1);
    /* And a table that is devalidated is flushed before it becomes writable. */
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, x), 0);
    uint64_t f1 = atomic_load(&tp->flushes);
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 0), pte(x, PTE_P | PTE_RW)), 0);
    assert_int_equal(atomic_load(&tp->flushes), f1 + 1);
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 0), 0), 0);
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, l1), 0);
    th_assert_audit_clean(h);
}

static void test_destroy_with_pinned_trees(void **state)
{
    (void)state;
    struct mv_host_stats hs0 = {.size = sizeof(hs0)};
    assert_int_equal(mv_host_drain(h), 0);
    assert_int_equal(mv_host_stats(h, &hs0), 0);
    mv_domain_t *e = pvh_domain(h, 7, 4096, MV_DOMF_LINEAR_PT, 2);
    mv_vcpu_t *ev = mv_domain_vcpu(e, 0), *ev1 = mv_domain_vcpu(e, 1);
    mv_mfn_t data[700];
    for (unsigned i = 0; i < 700; i++)
        data[i] = pvh_frame(e);
    struct pvh_space a, b;
    pvh_build(h, e, &a, data, 700, true);
    pvh_build(h, e, &b, data, 300, false);
    pvh_tab(h, b.l4)[5] = pte(b.l4, PTE_P); /* a self-map */
    assert_int_equal(mv_pv_set_budget(e, 100), 0);
    assert_int_equal(pvh_op_all(ev, MV_PV_PIN_L4_TABLE, a.l4, NULL), 0);
    assert_int_equal(pvh_op_all(ev1, MV_PV_NEW_BASEPTR, b.l4, NULL), 0);
    /* A partial validation left open on a vCPU. */
    mv_mfn_t l2 = pvh_frame(e), l1 = pvh_frame(e);
    pvh_tab(h, l2)[0] = pte(l1, PTE_TABLE);
    for (unsigned i = 0; i < 300; i++)
        pvh_tab(h, l1)[i] = pte(data[i], PTE_P);
    assert_int_equal(pvh_op(ev, MV_PV_PIN_L2_TABLE, l2), MV_EAGAIN);
    th_assert_audit_clean(h);
    unsigned calls = 0;
    int rc;
    while ((rc = mv_domain_destroy(e)) == MV_EAGAIN)
        calls++;
    assert_int_equal(rc, 0);
    assert_true(calls > 5);
    assert_int_equal(mv_host_drain(h), 0);
    struct mv_host_stats hs1 = {.size = sizeof(hs1)};
    assert_int_equal(mv_host_stats(h, &hs1), 0);
    assert_int_equal(hs1.free_frames, hs0.free_frames);
    th_assert_audit_clean(h);
}

static void test_balloon_out_pinned_table_refused(void **state)
{
    (void)state;
    mv_domain_t *e = pvh_domain(h, 9, 64, 0, 1);
    mv_vcpu_t *ev = mv_domain_vcpu(e, 0);
    mv_gfn_t gfns[2] = {10, 11};
    uint64_t done = 0;
    assert_int_equal(mv_populate_physmap(e, gfns, 2, 0, MV_NODE_ANY, &done), 0);
    struct mv_p2m_entry pe[2];
    assert_int_equal(mv_p2m_lookup(e, 10, &pe[0]), 0);
    assert_int_equal(mv_p2m_lookup(e, 11, &pe[1]), 0);
    mv_mfn_t l1 = pe[0].mfn, x = pe[1].mfn;
    pvh_tab(h, l1)[0] = pte(x, PTE_P | PTE_RW);
    assert_int_equal(pvh_op(ev, MV_PV_PIN_L1_TABLE, l1), 0);
    mv_domain_t *doms[] = {e, d};
    uint64_t before = pvh_digest(h, doms, 2);
    /* Neither the pinned table nor the frame it maps writable can leave. */
    assert_int_equal(mv_decrease_reservation(e, &gfns[0], 1, 0, &done), MV_EBUSY);
    assert_int_equal(mv_decrease_reservation(e, &gfns[1], 1, 0, &done), MV_EBUSY);
    assert_int_equal(pvh_digest(h, doms, 2), before);
    th_assert_audit_clean(h);
    /* Unpinned, both can. */
    assert_int_equal(pvh_op(ev, MV_PV_UNPIN_TABLE, l1), 0);
    assert_int_equal(mv_decrease_reservation(e, gfns, 2, 0, &done), 0);
    assert_int_equal(done, 2);
    th_assert_audit_clean(h);
    pvh_destroy(e);
}

static void test_not_pv(void **state)
{
    (void)state;
    struct mv_domain_config c = {.size = sizeof(c), .domid = 20, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_HAP, .nr_vcpus = 1, .max_pages = 16,
                                 .node_affinity = MV_NODE_ANY};
    mv_domain_t *hv;
    assert_int_equal(mv_domain_create(h, &c, &hv), 0);
    uint32_t done;
    struct mv_pv_mmu_update r = {0};
    assert_int_equal(mv_pv_mmu_update(mv_domain_vcpu(hv, 0), &r, 1, &done), MV_EOPNOTSUPP);
    struct mv_pv_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_pv_stats(hv, &st), MV_EOPNOTSUPP);
    st.size = 8;
    assert_int_equal(mv_pv_stats(d, &st), MV_EINVAL);
    assert_int_equal(mv_pv_mmu_update(NULL, &r, 1, &done), MV_EINVAL);
    assert_int_equal(mv_pv_mmu_update(v, NULL, 1, &done), MV_EINVAL);
    pvh_destroy(hv);
}

/*
 * A frame the domain gives up while PV still maps it stays until the last PV reference
 * goes; that last put frees it through the heap, after the PV lock is released (debug
 * builds check that no lock is held when the heap decommits).
 */
static void test_last_reference_freed_after_unlock(void **state)
{
    (void)state;
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    mv_mfn_t l1 = pvh_frame(d), x = pvh_frame(d), t = pvh_frame(d);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L1_TABLE, l1), 0);
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 0), pte(x, PTE_P | PTE_RW)), 0);
    assert_int_equal(mv_domain_free_frames(d, x, 0), 0);
    assert_int_equal(pvh_info(h, x).owner, 1);
    assert_int_equal(pvh_info(h, x).refs, 1);
    th_assert_audit_clean(h);
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    uint64_t pages = ds.pages;
    assert_int_equal(pvh_upd(v, pvh_ptr(l1, 0), 0), 0);
    assert_int_equal(pvh_info(h, x).owner, UINT32_MAX);
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    assert_int_equal(ds.pages, pages - 1);
    /* A pinned table whose frame was given up goes when it is unpinned. */
    pvh_tab(h, t)[3] = pte(l1, PTE_P); /* read-only map of the L1 */
    assert_int_equal(pvh_op(v, MV_PV_PIN_L1_TABLE, t), 0);
    assert_int_equal(mv_domain_free_frames(d, t, 0), 0);
    assert_int_equal(mv_domain_free_frames(d, l1, 0), 0);
    th_assert_audit_clean(h);
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, l1), 0);
    assert_int_equal(pvh_info(h, l1).owner, 1); /* still mapped by t */
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, t), 0);
    assert_int_equal(pvh_info(h, t).owner, UINT32_MAX);
    assert_int_equal(pvh_info(h, l1).owner, UINT32_MAX);
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    assert_int_equal(ds.pages, pages - 3);
    th_assert_audit_clean(h);
}

/* Teardown releasing more last references than one batch of deferred puts holds. */
static void test_destroy_many_last_references(void **state)
{
    (void)state;
    assert_int_equal(mv_host_drain(h), 0);
    struct mv_host_stats hs0 = {.size = sizeof(hs0)};
    assert_int_equal(mv_host_stats(h, &hs0), 0);
    mv_domain_t *e = pvh_domain(h, 8, 1024, 0, 1);
    mv_vcpu_t *ev = mv_domain_vcpu(e, 0);
    assert_int_equal(mv_pv_set_budget(e, UINT32_MAX), 0);
    for (unsigned i = 0; i < 600; i++) {
        mv_mfn_t f = pvh_frame(e);
        assert_int_equal(pvh_op(ev, MV_PV_PIN_L1_TABLE, f), 0);
        assert_int_equal(mv_domain_free_frames(e, f, 0), 0); /* only the pin holds it now */
    }
    th_assert_audit_clean(h);
    unsigned calls = 0;
    int rc;
    while ((rc = mv_domain_destroy(e)) == MV_EAGAIN)
        calls++;
    assert_int_equal(rc, 0);
    assert_true(calls >= 2);
    assert_int_equal(mv_host_drain(h), 0);
    struct mv_host_stats hs1 = {.size = sizeof(hs1)};
    assert_int_equal(mv_host_stats(h, &hs1), 0);
    assert_int_equal(hs1.free_frames, hs0.free_frames);
    th_assert_audit_clean(h);
}

/* The audit sees what a broken engine (or a write behind its back) would leave. */
static void test_audit_catches(void **state)
{
    (void)state;
    mv_mfn_t l2 = pvh_frame(d), l1 = pvh_frame(d), x = pvh_frame(d);
    pvh_tab(h, l2)[0] = pte(l1, PTE_TABLE);
    pvh_tab(h, l1)[0] = pte(x, PTE_P);
    assert_int_equal(pvh_op(v, MV_PV_PIN_L2_TABLE, l2), 0);
    th_assert_audit_clean(h);
    uint64_t *e = &pvh_tab(h, l1)[1];
    /* An entry that holds no reference: the recount finds one more than the count. */
    *e = pte(x, PTE_P);
    assert_true(th_audit_has(h, "refcount-mismatch"));
    /* A writable entry to a frame that is not writable-typed (I4/I5). */
    *e = pte(x, PTE_P | PTE_RW);
    assert_true(th_audit_has(h, "writable-entry-not-writable"));
    /* Bits no update would let through (I5). */
    *e = 0;
    pvh_tab(h, l1)[2] = 0x0000000000001000ull; /* not present, naming memory */
    assert_true(th_audit_has(h, "entry-bits"));
    pvh_tab(h, l1)[2] = 0;
    /* An upper entry to a frame that is not the next level down (I5). */
    pvh_tab(h, l2)[1] = pte(x, PTE_TABLE);
    assert_true(th_audit_has(h, "entry-target-level"));
    pvh_tab(h, l2)[1] = 0;
    /* A pinned table that is not validated (I7). */
    struct mv_frame *f = mv__frame(h, l2);
    uint64_t t0 = atomic_load(&f->type_info);
    atomic_store(&f->type_info, t0 & ~MV_PGT_VALIDATED);
    assert_true(th_audit_has(h, "pinned-not-validated"));
    atomic_store(&f->type_info, t0);
    th_assert_audit_clean(h);
    assert_int_equal(pvh_op(v, MV_PV_UNPIN_TABLE, l2), 0);
    th_assert_audit_clean(h);
}

/* ---- Concurrency: vCPUs of one domain serialize on its PV lock; domains run in parallel. */

#define TH_SHARED 64

struct th_arg {
    mv_domain_t *d;
    mv_vcpu_t *v;
    mv_mfn_t l1;
    const mv_mfn_t *shared;
    uint64_t seed;
    int failures;
};

static void *updater(void *p)
{
    struct th_arg *a = p;
    struct th_rng r = {a->seed};
    struct mv_pv_mmu_update req[32];
    for (unsigned it = 0; it < 400; it++) {
        for (unsigned i = 0; i < 32; i++) {
            uint64_t fl = PTE_P | (th_rand_below(&r, 2) ? PTE_RW : 0);
            uint64_t val = th_rand_below(&r, 8) ? pte(a->shared[th_rand_below(&r, TH_SHARED)], fl)
                                                 : 0;
            req[i] = (struct mv_pv_mmu_update){pvh_ptr(a->l1, (unsigned)th_rand_below(&r, 64)),
                                               val};
        }
        uint32_t done, off = 0;
        int rc;
        while ((rc = mv_pv_mmu_update(a->v, req + off, 32 - off, &done)) == MV_EAGAIN)
            off += done;
        if (rc)
            a->failures++;
        if (it % 50 == 0) {
            struct mv_pv_mmuext_op o = {.cmd = MV_PV_TLB_FLUSH_LOCAL};
            if (mv_pv_mmuext_op(a->v, &o, 1, &done))
                a->failures++;
        }
    }
    return NULL;
}

static void *pinner(void *p)
{
    struct th_arg *a = p;
    for (unsigned it = 0; it < 300; it++) {
        struct mv_pv_mmuext_op o = {.cmd = MV_PV_PIN_L2_TABLE, .arg = a->l1};
        uint32_t done;
        int rc;
        while ((rc = mv_pv_mmuext_op(a->v, &o, 1, &done)) == MV_EAGAIN && !done)
            ;
        o.cmd = MV_PV_UNPIN_TABLE;
        int rc2;
        while ((rc2 = mv_pv_mmuext_op(a->v, &o, 1, &done)) == MV_EAGAIN && !done)
            ;
        while (mv_pv_mmuext_op(a->v, NULL, 0, &done) == MV_EAGAIN)
            ;
        if (rc || (rc2 && rc2 != MV_EAGAIN))
            a->failures++;
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    mv_domain_t *e = pvh_domain(h, 30, 256, 0, 1);
    mv_mfn_t shared[TH_SHARED];
    for (unsigned i = 0; i < TH_SHARED; i++)
        shared[i] = pvh_frame(d);
    struct th_arg a[3] = {
        {.d = d, .v = mv_domain_vcpu(d, 0), .l1 = pvh_frame(d), .shared = shared, .seed = 1},
        {.d = d, .v = mv_domain_vcpu(d, 1), .l1 = pvh_frame(d), .shared = shared, .seed = 2},
        {.d = e, .v = mv_domain_vcpu(e, 0), .l1 = pvh_frame(e)},
    };
    /* The other domain pins and unpins an L2 over a few L1s. */
    mv_mfn_t el1 = pvh_frame(e), x = pvh_frame(e);
    pvh_tab(h, el1)[0] = pte(x, PTE_P | PTE_RW);
    pvh_tab(h, a[2].l1)[0] = pte(el1, PTE_TABLE);
    for (unsigned i = 0; i < 2; i++)
        assert_int_equal(pvh_op(a[i].v, MV_PV_PIN_L1_TABLE, a[i].l1), 0);
    pthread_t t[3];
    assert_int_equal(pthread_create(&t[0], NULL, updater, &a[0]), 0);
    assert_int_equal(pthread_create(&t[1], NULL, updater, &a[1]), 0);
    assert_int_equal(pthread_create(&t[2], NULL, pinner, &a[2]), 0);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(a[i].failures, 0);
    th_assert_audit_clean(h);
    for (unsigned i = 0; i < 2; i++)
        assert_int_equal(pvh_op_all(a[i].v, MV_PV_UNPIN_TABLE, a[i].l1, NULL), 0);
    for (unsigned i = 0; i < TH_SHARED; i++) {
        assert_int_equal(pvh_info(h, shared[i]).refs, 1);
        assert_int_equal(pvh_info(h, shared[i]).type_refs, 0);
    }
    th_assert_audit_clean(h);
    pvh_destroy(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pin_l1_refs),
        cmocka_unit_test(test_l1_update_moves_references),
        cmocka_unit_test(test_four_levels_and_base),
        cmocka_unit_test(test_upper_update_validates_subtree),
        cmocka_unit_test(test_linear_entries),
        cmocka_unit_test(test_plain_write),
        cmocka_unit_test(test_preempted_pin_continues),
        cmocka_unit_test(test_abandoned_continuation_rolls_back),
        cmocka_unit_test(test_flush_ops),
        cmocka_unit_test(test_flush_before_retype),
        cmocka_unit_test(test_destroy_with_pinned_trees),
        cmocka_unit_test(test_balloon_out_pinned_table_refused),
        cmocka_unit_test(test_not_pv),
        cmocka_unit_test(test_last_reference_freed_after_unlock),
        cmocka_unit_test(test_destroy_many_last_references),
        cmocka_unit_test(test_audit_catches),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
