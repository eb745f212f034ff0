/*
 * tests/test_pv_hostile.c - a hostile PV guest, one test per attack (INVARIANTS.md, "Classes
 * of hostile input", the PV ones). Each asserts the exact error, the refusal reason counted,
 * that the engine's state is bit for bit what it was (pvh_digest: frame table, frame
 * contents, domain and PV statistics, base pointers) and a clean audit.
 *
 * Fixture, fresh for every test: domain A (id 1, linear entries allowed, 2 vCPUs) with a
 * pinned 4-level tree l4 -> l3 -> l2 -> l1 mapping four data frames writable, a second
 * pinned L4 (l4b) and spare frames; domain B (id 2, no linear entries, address width 36)
 * with a pinned L4 and a pinned L1 mapping one frame.
 */
#include <stdatomic.h>

#include "mm-internal.h"
#include "pv_helpers.h"

static mv_host_t *h;
static struct th_platform *tp;
static mv_domain_t *A, *B;
static mv_vcpu_t *va, *va1, *vb;
static mv_mfn_t l4, l3, l2, l1, l4b, dA[4], sA[8];
static mv_mfn_t l4B, l1B, dB;

static int setup(void **state)
{
    (void)state;
    h = th_host_create(32 * TH_MiB, NULL, &tp);
    A = pvh_domain(h, 1, 4096, MV_DOMF_LINEAR_PT, 2);
    struct mv_domain_config c = {.size = sizeof(c), .domid = 2, .type = MV_DOMAIN_PV,
                                 .paging = MV_PAGING_PV, .nr_vcpus = 1, .max_pages = 1024,
                                 .node_affinity = MV_NODE_ANY, .phys_bits = 36};
    assert_int_equal(mv_domain_create(h, &c, &B), 0);
    va = mv_domain_vcpu(A, 0);
    va1 = mv_domain_vcpu(A, 1);
    vb = mv_domain_vcpu(B, 0);
    l4 = pvh_frame(A);
    l3 = pvh_frame(A);
    l2 = pvh_frame(A);
    l1 = pvh_frame(A);
    l4b = pvh_frame(A);
    for (unsigned i = 0; i < 4; i++) {
        dA[i] = pvh_frame(A);
        pvh_tab(h, l1)[i] = pte(dA[i], PTE_P | PTE_RW | PTE_US);
    }
    for (unsigned i = 0; i < 8; i++)
        sA[i] = pvh_frame(A);
    pvh_tab(h, l2)[0] = pte(l1, PTE_TABLE);
    pvh_tab(h, l3)[0] = pte(l2, PTE_TABLE);
    pvh_tab(h, l4)[0] = pte(l3, PTE_TABLE);
    assert_int_equal(pvh_op(va, MV_PV_PIN_L4_TABLE, l4), 0);
    assert_int_equal(pvh_op(va, MV_PV_PIN_L4_TABLE, l4b), 0);
    assert_int_equal(pvh_op(va, MV_PV_NEW_BASEPTR, l4), 0);
    l4B = pvh_frame(B);
    l1B = pvh_frame(B);
    dB = pvh_frame(B);
    pvh_tab(h, l1B)[0] = pte(dB, PTE_P | PTE_RW);
    assert_int_equal(pvh_op(vb, MV_PV_PIN_L4_TABLE, l4B), 0);
    assert_int_equal(pvh_op(vb, MV_PV_PIN_L1_TABLE, l1B), 0);
    th_assert_audit_clean(h);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    th_assert_audit_clean(h);
    pvh_destroy(A);
    pvh_destroy(B);
    th_host_destroy(h, tp);
    return 0;
}

static uint64_t digest(void)
{
    mv_domain_t *doms[] = {A, B};
    return pvh_digest(h, doms, 2);
}

/* Run `call`; it must fail with `err`, counted under `reason` in dom, changing nothing. */
#define REFUSED(dom, call, err, reason)                                             \
    do {                                                                            \
        uint64_t before_ = digest();                                                \
        uint64_t r0_ = pvh_stats(dom).refusals[reason];                             \
        assert_int_equal((call), (err));                                            \
        assert_int_equal(pvh_stats(dom).refusals[reason], r0_ + 1);                 \
        assert_int_equal(digest(), before_);                                        \
        th_assert_audit_clean(h);                                                   \
    } while (0)

static mv_mfn_t pv_pte_mfn_of(uint64_t e)
{
    return (e & MV_PTE_ADDR_MASK) >> MV_PAGE_SHIFT;
}

#define UPD(vc, ptr, val) pvh_upd(vc, ptr, val)
#define OP(vc, cmd, arg) pvh_op(vc, cmd, arg)

/* ---- Writable mappings of page-table frames ------------------------------------------- */

static void test_l1_maps_own_table_writable(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l1, 10), pte(l1, PTE_P | PTE_RW)), MV_EBUSY, MV_PV_REFUSE_TYPE);
}

static void test_l1_maps_l4_writable(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l1, 10), pte(l4, PTE_P | PTE_RW)), MV_EBUSY, MV_PV_REFUSE_TYPE);
    /* Read-only is fine (Xen allows it): the guest reads its own tables. */
    assert_int_equal(UPD(va, pvh_ptr(l1, 10), pte(l4, PTE_P)), 0);
    assert_int_equal(UPD(va, pvh_ptr(l1, 10), 0), 0);
}

static void test_superpage_l2(void **state) /* XSA-148 */
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l2, 1), pte(l1, PTE_TABLE | MV_PTE_PS)), MV_EOPNOTSUPP,
            MV_PV_REFUSE_SUPERPAGE);
    /* Covering the L2 itself with a 2 MiB page starting at it. */
    REFUSED(A, UPD(va, pvh_ptr(l2, 2), pte(l2 & ~511ull, PTE_P | PTE_RW | MV_PTE_PS)),
            MV_EOPNOTSUPP, MV_PV_REFUSE_SUPERPAGE);
}

static void test_superpage_l3(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l3, 1), pte(0, PTE_P | PTE_RW | MV_PTE_PS)), MV_EOPNOTSUPP,
            MV_PV_REFUSE_SUPERPAGE);
}

static void test_self_map_rw_flip(void **state) /* XSA-182 */
{
    (void)state;
    assert_int_equal(UPD(va, pvh_ptr(l4, 400), pte(l4, PTE_P | PTE_A)), 0);
    uint64_t fast = pvh_stats(A).fast_updates;
    REFUSED(A, UPD(va, pvh_ptr(l4, 400), pte(l4, PTE_P | PTE_A | PTE_RW)), MV_EACCES,
            MV_PV_REFUSE_LINEAR);
    assert_int_equal(pvh_stats(A).fast_updates, fast);
    /* Flipping only A/D stays on the fast path and keeps it read-only. */
    assert_int_equal(UPD(va, pvh_ptr(l4, 400), pte(l4, PTE_P | PTE_A | PTE_D)), 0);
    assert_int_equal(pvh_stats(A).fast_updates, fast + 1);
}

static void test_self_map_writable(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l3, 9), pte(l3, PTE_P | PTE_RW)), MV_EACCES, MV_PV_REFUSE_LINEAR);
}

/* ---- Linear page tables --------------------------------------------------------------- */

static void test_linear_chain_forward(void **state) /* XSA-240 */
{
    (void)state;
    mv_mfn_t c4 = sA[0];
    assert_int_equal(OP(va, MV_PV_PIN_L4_TABLE, c4), 0);
    /* l4 -> l4b linear: l4b is now a linear target ... */
    assert_int_equal(UPD(va, pvh_ptr(l4, 401), pte(l4b, PTE_P)), 0);
    /* ... so it may not hold linear entries itself. */
    REFUSED(A, UPD(va, pvh_ptr(l4b, 5), pte(c4, PTE_P)), MV_EBUSY, MV_PV_REFUSE_LINEAR);
    /* And l4, which holds one, may not become a target. */
    REFUSED(A, UPD(va, pvh_ptr(c4, 5), pte(l4, PTE_P)), MV_EBUSY, MV_PV_REFUSE_LINEAR);
}

static void test_linear_writable(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l4, 402), pte(l4b, PTE_P | PTE_RW)), MV_EACCES,
            MV_PV_REFUSE_LINEAR);
}

static void test_linear_disabled(void **state)
{
    (void)state;
    REFUSED(B, UPD(vb, pvh_ptr(l4B, 3), pte(l4B, PTE_P)), MV_EPERM, MV_PV_REFUSE_LINEAR);
}

static void test_linear_cross_domain(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l4, 403), pte(l4B, PTE_P)), MV_EXDEV, MV_PV_REFUSE_OWNER);
}

/* ---- Frames the domain does not own (XSA-248) ------------------------------------------ */

static void test_map_foreign_frame(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l1, 20), pte(dB, PTE_P)), MV_EXDEV, MV_PV_REFUSE_OWNER);
}

static void test_map_engine_frame(void **state)
{
    (void)state;
    mv_mfn_t e;
    assert_int_equal(mv_frame_alloc(h, 0, MV_NODE_ANY, 0, &e), 0);
    REFUSED(A, UPD(va, pvh_ptr(l1, 20), pte(e, PTE_P)), MV_EPERM, MV_PV_REFUSE_OWNER);
    assert_int_equal(mv_frame_free(h, e, 0), 0);
}

static void test_map_free_frame(void **state)
{
    (void)state;
    mv_mfn_t e;
    assert_int_equal(mv_frame_alloc(h, 0, MV_NODE_ANY, 0, &e), 0);
    assert_int_equal(mv_frame_free(h, e, 0), 0);
    REFUSED(A, UPD(va, pvh_ptr(l1, 20), pte(e, PTE_P | PTE_RW)), MV_EPERM, MV_PV_REFUSE_OWNER);
}

static void test_map_beyond_machine(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l1, 20), pte(1ull << 26, PTE_P)), MV_ERANGE, MV_PV_REFUSE_OWNER);
}

static void test_l2_to_foreign_l1(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l2, 3), pte(l1B, PTE_TABLE)), MV_EXDEV, MV_PV_REFUSE_OWNER);
}

/* ---- Bits ------------------------------------------------------------------------------- */

static void test_reserved_address_bits(void **state)
{
    (void)state;
    /* Width 40 for A: bit 45 is reserved. */
    REFUSED(A, UPD(va, pvh_ptr(l1, 21), pte(dA[0], PTE_P) | (1ull << 45)), MV_ERANGE,
            MV_PV_REFUSE_RESERVED);
}

static void test_reserved_bits_narrow_width(void **state)
{
    (void)state;
    /* Width 36 for B: bit 37 is reserved for B, not for A. */
    REFUSED(B, UPD(vb, pvh_ptr(l1B, 1), pte(dB, PTE_P) | (1ull << 37)), MV_ERANGE,
            MV_PV_REFUSE_RESERVED);
}

static void test_high_available_bits(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l1, 22), pte(dA[0], PTE_P) | (1ull << 55)), MV_EINVAL,
            MV_PV_REFUSE_FLAGS);
    REFUSED(A, UPD(va, pvh_ptr(l1, 22), pte(dA[0], PTE_P) | (1ull << 60)), MV_EINVAL,
            MV_PV_REFUSE_FLAGS); /* protection keys */
}

static void test_l2_cache_bits(void **state)
{
    (void)state;
    mv_mfn_t t = sA[1];
    REFUSED(A, UPD(va, pvh_ptr(l2, 4), pte(t, PTE_TABLE | MV_PTE_PCD)), MV_EINVAL,
            MV_PV_REFUSE_FLAGS);
    REFUSED(A, UPD(va, pvh_ptr(l2, 4), pte(t, PTE_TABLE | MV_PTE_PWT)), MV_EINVAL,
            MV_PV_REFUSE_FLAGS);
}

static void test_l4_global_and_ps(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l4, 2), pte(sA[2], PTE_TABLE | MV_PTE_G)), MV_EINVAL,
            MV_PV_REFUSE_FLAGS);
    REFUSED(A, UPD(va, pvh_ptr(l4, 2), pte(sA[2], PTE_TABLE | MV_PTE_PS)), MV_EINVAL,
            MV_PV_REFUSE_FLAGS);
}

static void test_not_present_names_memory(void **state) /* XSA-273 */
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l1, 23), pte(dB, 0)), MV_EFAULT, MV_PV_REFUSE_NOT_PRESENT);
    REFUSED(A, UPD(va, pvh_ptr(l2, 23), pte(l1B, PTE_RW)), MV_EFAULT, MV_PV_REFUSE_NOT_PRESENT);
    /* Zero, or beyond machine memory (inverted swap entries), is fine. */
    assert_int_equal(UPD(va, pvh_ptr(l1, 23), 0xfffffff000ull | 0x3e0), 0);
    assert_int_equal(UPD(va, pvh_ptr(l1, 23), 0), 0);
}

static void test_l4_reserved_slots(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l4, MV_PV_L4_RESERVED_FIRST), pte(sA[3], PTE_TABLE)), MV_EPERM,
            MV_PV_REFUSE_FLAGS);
    REFUSED(A, UPD(va, pvh_ptr(l4, MV_PV_L4_RESERVED_LAST), 0x2), MV_EPERM, MV_PV_REFUSE_FLAGS);
    /* A table carrying a reserved slot cannot be pinned either. */
    mv_mfn_t t = sA[4];
    pvh_tab(h, t)[MV_PV_L4_RESERVED_FIRST + 3] = pte(sA[5], PTE_TABLE);
    REFUSED(A, OP(va, MV_PV_PIN_L4_TABLE, t), MV_EPERM, MV_PV_REFUSE_FLAGS);
}

/* ---- Update addresses and frame numbers (XSA-227, XSA-167) ----------------------------- */

static void test_misaligned_address(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l1, 5) + 4, pte(dA[0], PTE_P)), MV_EINVAL, MV_PV_REFUSE_ADDRESS);
}

static void test_unknown_command(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l1, 5) | 1, 7), MV_EOPNOTSUPP, MV_PV_REFUSE_ADDRESS);
    REFUSED(A, UPD(va, pvh_ptr(l1, 5) | 3, 7), MV_EOPNOTSUPP, MV_PV_REFUSE_ADDRESS);
}

static void test_address_other_domains_table(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, pvh_ptr(l1B, 5), pte(dA[0], PTE_P)), MV_EXDEV, MV_PV_REFUSE_OWNER);
    /* Nor a plain write into the other domain's frame. */
    REFUSED(A, UPD(va, pvh_ptr(dB, 5), 1), MV_EXDEV, MV_PV_REFUSE_OWNER);
}

static void test_address_out_of_range(void **state)
{
    (void)state;
    REFUSED(A, UPD(va, ~7ull << 2, 0), MV_ERANGE, MV_PV_REFUSE_ADDRESS);
    REFUSED(A, UPD(va, (1ull << 40) << MV_PAGE_SHIFT, 0), MV_ERANGE, MV_PV_REFUSE_ADDRESS);
}

static void test_address_engine_frame(void **state)
{
    (void)state;
    mv_mfn_t e;
    assert_int_equal(mv_frame_alloc(h, 0, MV_NODE_ANY, 0, &e), 0);
    REFUSED(A, UPD(va, pvh_ptr(e, 0), 1), MV_EPERM, MV_PV_REFUSE_OWNER);
    assert_int_equal(mv_frame_free(h, e, 0), 0);
}

static void test_pin_out_of_range(void **state)
{
    (void)state;
    REFUSED(A, OP(va, MV_PV_PIN_L1_TABLE, 1ull << 30), MV_ERANGE, MV_PV_REFUSE_OWNER);
    REFUSED(A, OP(va, MV_PV_UNPIN_TABLE, ~0ull - 5), MV_ERANGE, MV_PV_REFUSE_OWNER);
    REFUSED(A, OP(va, MV_PV_NEW_BASEPTR, 1ull << 40), MV_ERANGE, MV_PV_REFUSE_OWNER);
}

/* ---- Pin and unpin misuse ------------------------------------------------------------- */

static void test_double_pin(void **state)
{
    (void)state;
    REFUSED(A, OP(va, MV_PV_PIN_L4_TABLE, l4), MV_EALREADY, MV_PV_REFUSE_PIN);
}

static void test_unpin_unpinned(void **state)
{
    (void)state;
    REFUSED(A, OP(va, MV_PV_UNPIN_TABLE, l3), MV_EINVAL, MV_PV_REFUSE_PIN);
    REFUSED(A, OP(va, MV_PV_UNPIN_TABLE, dA[0]), MV_EINVAL, MV_PV_REFUSE_PIN);
}

static void test_unpin_foreign(void **state)
{
    (void)state;
    REFUSED(A, OP(va, MV_PV_UNPIN_TABLE, l4B), MV_EXDEV, MV_PV_REFUSE_OWNER);
}

static void test_pin_wrong_level(void **state)
{
    (void)state;
    REFUSED(A, OP(va, MV_PV_PIN_L2_TABLE, l1), MV_EBUSY, MV_PV_REFUSE_TYPE);
    /* A frame mapped writable cannot become a table. */
    REFUSED(A, OP(va, MV_PV_PIN_L1_TABLE, dA[1]), MV_EBUSY, MV_PV_REFUSE_TYPE);
}

static void test_base_not_l4(void **state)
{
    (void)state;
    REFUSED(A, OP(va, MV_PV_NEW_BASEPTR, l3), MV_EBUSY, MV_PV_REFUSE_TYPE);
    REFUSED(A, OP(va, MV_PV_NEW_USER_BASEPTR, dA[2]), MV_EBUSY, MV_PV_REFUSE_TYPE);
    REFUSED(A, OP(va, MV_PV_NEW_BASEPTR, l4B), MV_EXDEV, MV_PV_REFUSE_OWNER);
}

#define POISON_TABLE_RW UINT64_MAX

/* A tree of `n` L1s under a fresh L2 under a fresh L3, the last L1's last entry poisoned. */
static mv_mfn_t poisoned_tree(unsigned n, uint64_t poison, mv_mfn_t *l1s)
{
    mv_mfn_t t3 = pvh_frame(A), t2 = pvh_frame(A);
    pvh_tab(h, t3)[0] = pte(t2, PTE_TABLE);
    for (unsigned i = 0; i < n; i++) {
        l1s[i] = pvh_frame(A);
        pvh_tab(h, t2)[i] = pte(l1s[i], PTE_TABLE);
        for (unsigned k = 0; k < 512; k++)
            pvh_tab(h, l1s[i])[k] = pte(dA[k % 4], PTE_P | (k & 1 ? PTE_RW : 0));
    }
    /* POISON_TABLE_RW: a writable mapping of one of the tree's own L1s. */
    pvh_tab(h, l1s[n - 1])[511] = poison == POISON_TABLE_RW ? pte(l1s[3], PTE_P | PTE_RW) : poison;
    return t3;
}

static void test_validation_fails_half_way(void **state) /* XSA-58, XSA-299 class */
{
    (void)state;
    mv_mfn_t l1s[8];
    mv_mfn_t t3 = poisoned_tree(8, pte(dB, PTE_P), l1s);
    REFUSED(A, OP(va, MV_PV_PIN_L3_TABLE, t3), MV_EXDEV, MV_PV_REFUSE_OWNER);
    /* The same through an update of l4. */
    REFUSED(A, UPD(va, pvh_ptr(l4, 7), pte(t3, PTE_TABLE)), MV_EXDEV, MV_PV_REFUSE_OWNER);
}

static void test_validation_fails_after_preemptions(void **state)
{
    (void)state;
    mv_mfn_t l1s[16];
    mv_mfn_t t3 = poisoned_tree(16, POISON_TABLE_RW, l1s);
    uint64_t before = digest();
    assert_int_equal(mv_pv_set_budget(A, 700), 0);
    int rc;
    unsigned calls = 0;
    while ((rc = OP(va, MV_PV_PIN_L3_TABLE, t3)) == MV_EAGAIN)
        calls++;
    assert_int_equal(rc, MV_EBUSY);
    assert_true(calls >= 8);
    /* A rollback longer than one budget continues first thing in the next call. */
    pvh_settle(va);
    assert_int_equal(mv_pv_set_budget(A, 0), 0);
    assert_int_equal(digest(), before);
    assert_int_equal(pvh_stats(A).refusals[MV_PV_REFUSE_TYPE], 1);
}

static void test_pin_bounded(void **state)
{
    (void)state;
    mv_mfn_t l1s[16];
    mv_mfn_t t3 = poisoned_tree(16, 0, l1s);
    assert_int_equal(mv_pv_set_budget(A, 1000), 0);
    /* Each call examines at most the budget: 16 * 512 + 16 + 1 entries need >= 9 calls. */
    unsigned calls;
    assert_int_equal(pvh_op_all(va, MV_PV_PIN_L3_TABLE, t3, &calls), 0);
    assert_true(calls >= 9);
    assert_true(pvh_stats(A).preemptions >= 8);
    assert_int_equal(pvh_op_all(va, MV_PV_UNPIN_TABLE, t3, NULL), 0);
    assert_int_equal(mv_pv_set_budget(A, 0), 0);
}

static void test_update_into_partial_table(void **state)
{
    (void)state;
    mv_mfn_t l1s[4];
    mv_mfn_t t3 = poisoned_tree(4, 0, l1s);
    assert_int_equal(mv_pv_set_budget(A, 600), 0);
    assert_int_equal(OP(va1, MV_PV_PIN_L3_TABLE, t3), MV_EAGAIN);
    /* The partial L2 (the L1s below it already done may be updated, as in Xen). */
    mv_mfn_t t2 = pv_pte_mfn_of(pvh_tab(h, t3)[0]);
    REFUSED(A, UPD(va, pvh_ptr(t2, 100), 0), MV_EBUSY, MV_PV_REFUSE_TYPE);
    REFUSED(A, OP(va, MV_PV_PIN_L3_TABLE, t3), MV_EBUSY, MV_PV_REFUSE_TYPE);
    REFUSED(A, UPD(va, pvh_ptr(l4, 8), pte(t3, PTE_TABLE)), MV_EBUSY, MV_PV_REFUSE_TYPE);
    /* Rolled back by va1's next call. */
    pvh_settle(va1);
    assert_int_equal(mv_pv_set_budget(A, 0), 0);
    assert_int_equal(pvh_stats(A).partial, 0);
}

/*
 * An open validation must only be continued by the same frame at the same level: a batch
 * that names the frame at another level (after an unrelated first item) rolls it back
 * instead, whatever the order.
 */
static void test_continuation_confusion(void **state)
{
    (void)state;
    mv_mfn_t l1s[4];
    mv_mfn_t t3 = poisoned_tree(4, 0, l1s);
    mv_mfn_t f4 = sA[7];
    assert_int_equal(OP(va, MV_PV_PIN_L4_TABLE, f4), 0);
    assert_int_equal(OP(va, MV_PV_UNPIN_TABLE, f4), 0); /* type word: L4, count 0 */
    assert_int_equal(mv_pv_set_budget(A, 600), 0);
    assert_int_equal(OP(va, MV_PV_PIN_L3_TABLE, t3), MV_EAGAIN);
    struct mv_pv_mmu_update r[2] = {
        {pvh_ptr(f4, 0), pte(t3, PTE_TABLE)}, /* a plain write naming t3 */
        {pvh_ptr(l2, 9), pte(t3, PTE_TABLE)}, /* t3 as an L1 */
    };
    uint32_t done = 0, off = 0;
    int rc;
    while ((rc = mv_pv_mmu_update(va, r + off, 2 - off, &done)) == MV_EAGAIN)
        off += done;
    assert_true(rc == 0 || rc == MV_EBUSY);
    pvh_settle(va);
    assert_int_equal(mv_pv_set_budget(A, 0), 0);
    assert_int_equal(pvh_stats(A).partial, 0);
    th_assert_audit_clean(h);
    assert_int_equal(UPD(va, pvh_ptr(l2, 9), 0), 0);
    th_assert_audit_clean(h);
}

/* ---- Operations ----------------------------------------------------------------------- */

static void test_bad_ops(void **state)
{
    (void)state;
    REFUSED(A, OP(va, 9, 0), MV_EINVAL, MV_PV_REFUSE_OTHER);
    REFUSED(A, OP(va, 1000, l4), MV_EINVAL, MV_PV_REFUSE_OTHER);
    struct mv_pv_mmuext_op o = {.cmd = MV_PV_TLB_FLUSH_LOCAL, .pad = 1};
    uint32_t done;
    REFUSED(A, mv_pv_mmuext_op(va, &o, 1, &done), MV_EINVAL, MV_PV_REFUSE_OTHER);
    REFUSED(A, OP(va, MV_PV_INVLPG_LOCAL, 0x0000800000000000ull), MV_EINVAL,
            MV_PV_REFUSE_ADDRESS);
}

static void test_batch_stops_at_refusal(void **state)
{
    (void)state;
    struct mv_pv_mmu_update r[5] = {
        {pvh_ptr(l1, 30), pte(sA[0], PTE_P)},
        {pvh_ptr(l1, 31), pte(sA[1], PTE_P | PTE_RW)},
        {pvh_ptr(l1, 32), pte(sA[2], PTE_P)},
        {pvh_ptr(l1, 33), pte(dB, PTE_P)},
        {pvh_ptr(l1, 34), pte(sA[3], PTE_P)},
    };
    uint32_t done = 0;
    assert_int_equal(mv_pv_mmu_update(va, r, 5, &done), MV_EXDEV);
    assert_int_equal(done, 3);
    assert_int_equal(pvh_tab(h, l1)[32], pte(sA[2], PTE_P));
    assert_int_equal(pvh_tab(h, l1)[33], 0);
    assert_int_equal(pvh_tab(h, l1)[34], 0);
    assert_int_equal(pvh_info(h, sA[3]).refs, 1);
    /* Continuing after the refused one is the guest's choice. */
    uint64_t before = digest();
    REFUSED(A, mv_pv_mmu_update(va, &r[3], 2, &done), MV_EXDEV, MV_PV_REFUSE_OWNER);
    assert_int_equal(digest(), before);
    assert_int_equal(mv_pv_mmu_update(va, &r[4], 1, &done), 0);
}

static void test_count_overflow(void **state)
{
    (void)state;
    struct mv_frame *f = mv__frame(h, sA[6]);
    uint32_t saved = atomic_load(&f->count);
    atomic_store(&f->count, MV_REF_MAX);
    uint64_t before = digest();
    uint64_t r0 = pvh_stats(A).refusals[MV_PV_REFUSE_OVERFLOW];
    assert_int_equal(UPD(va, pvh_ptr(l1, 40), pte(sA[6], PTE_P)), MV_EOVERFLOW);
    assert_int_equal(digest(), before);
    assert_int_equal(pvh_stats(A).refusals[MV_PV_REFUSE_OVERFLOW], r0 + 1);
    atomic_store(&f->count, saved);
    /* Type count at its maximum: a writable mapping is refused the same way. */
    uint64_t t0 = atomic_load(&f->type_info);
    atomic_store(&f->type_info, ((uint64_t)MV_PGT_WRITABLE << MV_PGT_TYPE_SHIFT) |
                                    MV_PGT_VALIDATED | MV_PGT_COUNT_MAX);
    atomic_store(&f->count, 5);
    before = digest();
    assert_int_equal(UPD(va, pvh_ptr(l1, 40), pte(sA[6], PTE_P | PTE_RW)), MV_EOVERFLOW);
    assert_int_equal(digest(), before);
    atomic_store(&f->type_info, t0);
    atomic_store(&f->count, saved);
    th_assert_audit_clean(h);
}

static void test_dying_domain(void **state)
{
    (void)state;
    mv_domain_t *e = pvh_domain(h, 3, 16, 0, 1);
    mv_vcpu_t *ev = mv_domain_vcpu(e, 0);
    mv_mfn_t f = pvh_frame(e);
    /* Force the first phase only: the domain is dying, nothing may be done any more. */
    atomic_store(&e->dying, true);
    uint64_t before = digest();
    assert_int_equal(OP(ev, MV_PV_PIN_L1_TABLE, f), MV_ESRCH);
    assert_int_equal(UPD(ev, pvh_ptr(f, 0), 1), MV_ESRCH);
    assert_int_equal(mv_pv_set_budget(e, 5), MV_ESRCH);
    assert_int_equal(digest(), before);
    atomic_store(&e->dying, false);
    pvh_destroy(e);
}

/*
 * Garbage: random batches of updates and operations with wild addresses, values, commands
 * and budgets, from both vCPUs, preempted calls sometimes continued and sometimes dropped.
 * Nothing may crash; every answer is 0, MV_EAGAIN or a refusal; the audit stays clean;
 * destroying the domain returns every frame.
 */
static uint64_t wild_mfn(struct th_rng *r)
{
    switch (th_rand_below(r, 8)) {
    case 0:
        return th_rand(r) >> 12;
    case 1:
        return dB;
    case 2:
        return l4 + th_rand_below(r, 4);
    case 3:
        return l4b;
    default:
        return sA[th_rand_below(r, 8)] + th_rand_below(r, 3);
    }
}

static void test_random_garbage(void **state)
{
    (void)state;
    struct th_rng r = {0x6a7ba6e};
    static const int allowed[] = {0, MV_EAGAIN, MV_EINVAL, MV_EPERM, MV_EXDEV, MV_ERANGE,
                                  MV_EBUSY, MV_EACCES, MV_EFAULT, MV_EOPNOTSUPP, MV_EALREADY,
                                  MV_ENOSPC};
    for (unsigned it = 0; it < 6000; it++) {
        mv_vcpu_t *v = th_rand_below(&r, 2) ? va : va1;
        if (th_rand_below(&r, 16) == 0)
            assert_int_equal(mv_pv_set_budget(A, (uint32_t)th_rand_below(&r, 2000)), 0);
        uint32_t n = 1 + (uint32_t)th_rand_below(&r, 8), done = 0;
        int rc;
        if (th_rand_below(&r, 2)) {
            struct mv_pv_mmu_update q[8];
            for (uint32_t i = 0; i < n; i++) {
                uint64_t flags = th_rand(&r) & (th_rand_below(&r, 4) ? 0x1e7ull : ~0ull);
                q[i].ptr = (wild_mfn(&r) << 12) | (th_rand_below(&r, 16) << 3) |
                           (th_rand_below(&r, 20) == 0 ? th_rand_below(&r, 8) : 0);
                q[i].val = th_rand_below(&r, 6) == 0 ? th_rand(&r)
                                                      : pte(wild_mfn(&r), flags) & ~(0x7ffull << 52);
            }
            rc = mv_pv_mmu_update(v, q, n, &done);
        } else {
            static const uint32_t cmds[] = {0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 15, 9, 99};
            struct mv_pv_mmuext_op o[8];
            for (uint32_t i = 0; i < n; i++)
                o[i] = (struct mv_pv_mmuext_op){
                    .cmd = cmds[th_rand_below(&r, MV_ARRAY_SIZE(cmds))],
                    .arg = th_rand_below(&r, 10) == 0 ? th_rand(&r) : wild_mfn(&r)};
            rc = mv_pv_mmuext_op(v, o, n, &done);
        }
        bool ok = false;
        for (unsigned k = 0; k < MV_ARRAY_SIZE(allowed); k++)
            ok |= rc == allowed[k];
        if (!ok)
            fail_msg("unexpected answer %s", mv_strerror_name(rc));
        assert_true(done <= n);
        if (it % 1000 == 999)
            th_assert_audit_clean(h);
    }
    assert_int_equal(mv_pv_set_budget(A, 0), 0);
    th_assert_audit_clean(h);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_l1_maps_own_table_writable),
        T(test_l1_maps_l4_writable),
        T(test_superpage_l2),
        T(test_superpage_l3),
        T(test_self_map_rw_flip),
        T(test_self_map_writable),
        T(test_linear_chain_forward),
        T(test_linear_writable),
        T(test_linear_disabled),
        T(test_linear_cross_domain),
        T(test_map_foreign_frame),
        T(test_map_engine_frame),
        T(test_map_free_frame),
        T(test_map_beyond_machine),
        T(test_l2_to_foreign_l1),
        T(test_reserved_address_bits),
        T(test_reserved_bits_narrow_width),
        T(test_high_available_bits),
        T(test_l2_cache_bits),
        T(test_l4_global_and_ps),
        T(test_not_present_names_memory),
        T(test_l4_reserved_slots),
        T(test_misaligned_address),
        T(test_unknown_command),
        T(test_address_other_domains_table),
        T(test_address_out_of_range),
        T(test_address_engine_frame),
        T(test_pin_out_of_range),
        T(test_double_pin),
        T(test_unpin_unpinned),
        T(test_unpin_foreign),
        T(test_pin_wrong_level),
        T(test_base_not_l4),
        T(test_validation_fails_half_way),
        T(test_validation_fails_after_preemptions),
        T(test_pin_bounded),
        T(test_update_into_partial_table),
        T(test_continuation_confusion),
        T(test_bad_ops),
        T(test_batch_stops_at_refusal),
        T(test_count_overflow),
        T(test_dying_domain),
        T(test_random_garbage),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
