/*
 * tests/test_logdirty.c - log-dirty, p2m faults and guest-physical access.
 *
 * The core is KVM's dirty_log_test model: a writer stores the round number into pages
 * (through mv_p2m_write_fault plus a store, and through mv_guest_phys_write); after each
 * peek-and-clean every page written since the last clean has its bit set, and every page
 * whose bit is set holds this round's number.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "p2m-internal.h"

static mv_host_t *h;
static struct th_platform *tp;

#define GFNS 8192u

static int setup(void **state)
{
    (void)state;
    h = th_host_create(256 * TH_MiB, NULL, &tp);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    th_host_destroy(h, tp);
    return 0;
}

static mv_domain_t *guest(uint32_t id)
{
    struct mv_domain_config c = {.size = sizeof(c), .domid = id, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_HAP, .nr_vcpus = 1, .max_pages = 2 * GFNS,
                                 .node_affinity = MV_NODE_ANY};
    mv_domain_t *d;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    /* Half the guest in 2 MiB extents, half in 4 KiB ones. */
    uint64_t done;
    for (mv_gfn_t g = 0; g < GFNS / 2; g += 512)
        assert_int_equal(mv_populate_physmap(d, &g, 1, 9, MV_NODE_ANY, &done), 0);
    for (mv_gfn_t g = GFNS / 2; g < GFNS; g++)
        assert_int_equal(mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done), 0);
    return d;
}

static void kill(mv_domain_t *d)
{
    int rc;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
}

static struct mv_p2m_entry look(mv_domain_t *d, mv_gfn_t g)
{
    struct mv_p2m_entry e;
    assert_int_equal(mv_p2m_lookup(d, g, &e), 0);
    return e;
}

static uint64_t peek_all(mv_domain_t *d, uint64_t *bitmap)
{
    uint64_t done, dirty;
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, GFNS, bitmap, GFNS, &done, &dirty), 0);
    assert_int_equal(done, GFNS);
    return dirty;
}

static bool bit(const uint64_t *bm, uint64_t i)
{
    return (bm[i / 64] >> (i % 64)) & 1;
}

static void test_dirty_log_model(void **state)
{
    (void)state;
    mv_domain_t *d = guest(1);
    static uint64_t bm[GFNS / 64];
    static uint8_t written[GFNS];
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    assert_int_equal(look(d, 3).type, MV_P2M_RAM_LOGDIRTY);
    assert_int_equal(look(d, 3).access & MV_P2M_W, 0);
    /* Enabling starts a clean round (the first pre-copy pass sends everything anyway). */
    assert_int_equal(peek_all(d, bm), 0);
    struct th_rng rng = {.s = 0x10d};
    for (uint64_t round = 1; round <= 30; round++) {
        memset(written, 0, sizeof(written));
        unsigned writes = 1 + (unsigned)th_rand_below(&rng, 600);
        for (unsigned i = 0; i < writes; i++) {
            mv_gfn_t g = th_rand_below(&rng, GFNS);
            if (th_rand_below(&rng, 2)) {
                /* The guest's store: it faults, the engine fixes, the store retries. */
                unsigned outcome;
                assert_int_equal(mv_p2m_handle_violation(d, g, MV_P2M_W, &outcome), 0);
                assert_int_equal(outcome, MV_P2M_RETRY);
                struct mv_p2m_entry e = look(d, g);
                assert_int_equal(e.type, MV_P2M_RAM_RW);
                assert_int_equal(e.order, 0);
                *(uint64_t *)mv_frame_va(h, e.mfn) = round;
            } else {
                assert_int_equal(mv_guest_phys_write(d, g << MV_PAGE_SHIFT, &round, 8), 0);
            }
            written[g] = 1;
        }
        uint64_t dirty = peek_all(d, bm);
        uint64_t count = 0;
        for (mv_gfn_t g = 0; g < GFNS; g++) {
            if (written[g])
                assert_true(bit(bm, g));
            if (bit(bm, g)) {
                count++;
                uint64_t v;
                assert_int_equal(mv_guest_phys_read(d, g << MV_PAGE_SHIFT, &v, 8), 0);
                assert_int_equal(v, round);
                assert_int_equal(look(d, g).type, MV_P2M_RAM_LOGDIRTY); /* re-protected */
            }
        }
        assert_int_equal(count, dirty);
        if (round % 10 == 0)
            th_assert_audit_clean(h);
    }
    struct mv_p2m_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_p2m_stats(d, &st), 0);
    assert_true(st.logdirty_splits >= 1);
    assert_true(st.write_faults >= 30);
    assert_true(st.logdirty_rounds >= 31);
    /* Off again: everything writable, counts exact, split superpages restored. */
    uint64_t split = st.logdirty_splits;
    assert_int_equal(mv_p2m_logdirty_disable(d), 0);
    assert_int_equal(mv_p2m_stats(d, &st), 0);
    assert_int_equal(st.pages_by_type[MV_P2M_RAM_RW], GFNS);
    assert_int_equal(st.pages_by_type[MV_P2M_RAM_LOGDIRTY], 0);
    assert_int_equal(st.logdirty, 0);
    assert_int_equal(st.pages_by_order[1], GFNS / 2 / 512); /* the 2 MiB half, whole again */
    assert_true(st.logdirty_collapsed >= split);
    assert_int_equal(look(d, 700).order, 9);
    th_assert_audit_clean(h);
    kill(d);
}

/* Pages populated while logging are dirty; a superpage split by one write keeps the rest
 * protected. */
static void test_populate_and_split_while_logging(void **state)
{
    (void)state;
    mv_domain_t *d = guest(2);
    static uint64_t bm[GFNS / 64];
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    peek_all(d, bm);
    uint64_t done;
    mv_gfn_t g = 1000;
    assert_int_equal(mv_decrease_reservation(d, &g, 1, 0, &done), 0); /* splits, unmaps */
    assert_int_equal(mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done), 0);
    assert_int_equal(look(d, g).type, MV_P2M_RAM_LOGDIRTY);
    assert_int_equal(mv_p2m_write_fault(d, 700), 0);
    assert_int_equal(look(d, 700).type, MV_P2M_RAM_RW);
    assert_int_equal(look(d, 701).type, MV_P2M_RAM_LOGDIRTY);
    assert_int_equal(look(d, 701).order, 0);
    assert_int_equal(mv_p2m_write_fault(d, 700), 0); /* stale: nothing to do */
    assert_int_equal(peek_all(d, bm), 2);
    assert_true(bit(bm, 1000) && bit(bm, 700));
    th_assert_audit_clean(h);
    /* set_entry of ram_rw while logging: protected and dirty. */
    assert_int_equal(mv_p2m_set_entry(d, 1000, MV_INVALID_MFN, 0, MV_P2M_INVALID, 0), 0);
    mv_mfn_t m;
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &m), 0);
    assert_int_equal(mv_p2m_set_entry(d, 1001, MV_INVALID_MFN, 0, MV_P2M_INVALID, 0), 0);
    assert_int_equal(mv_p2m_set_entry(d, 5000, m, 0, MV_P2M_RAM_RW, MV_P2M_RWX), 0);
    assert_int_equal(look(d, 5000).type, MV_P2M_RAM_LOGDIRTY);
    assert_int_equal(peek_all(d, bm), 1);
    assert_true(bit(bm, 5000));
    th_assert_audit_clean(h);
    kill(d);
}

static void test_bad_input(void **state)
{
    (void)state;
    mv_domain_t *d = guest(3);
    static uint64_t bm[GFNS / 64];
    uint64_t done = 5, dirty = 5;
    /* Not logging. */
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, 64, bm, 64, &done, &dirty), MV_EPERM);
    assert_int_equal(mv_p2m_logdirty_disable(d), MV_EALREADY);
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    assert_int_equal(mv_p2m_logdirty_enable(d), MV_EALREADY);
    /* Bitmaps too small, ranges beyond the guest. */
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, 128, bm, 64, &done, &dirty), MV_ENOSPC);
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, (1ull << 28) - 10, 64, bm, 64, &done,
                                                    &dirty), MV_ERANGE);
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, 64, NULL, 64, &done, &dirty), MV_EINVAL);
    /* Preemption: a huge range comes back in slices. */
    static uint64_t big[(1u << 23) / 64];
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, 0, 1u << 23, big, 1u << 23, &done, &dirty),
                     MV_EAGAIN);
    assert_int_equal(done, 1u << 22);
    assert_int_equal(dirty, 0);
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(d, done, (1u << 23) - done, big,
                                                    1u << 23, &done, &dirty), 0);
    assert_int_equal(dirty, 0);

    /* Faults with a defined outcome. */
    mv_mfn_t m;
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &m), 0);
    assert_int_equal(mv_p2m_set_entry(d, 9000, m, 0, MV_P2M_RAM_RO, MV_P2M_RWX), 0);
    assert_int_equal(mv_p2m_write_fault(d, 9000), MV_EACCES);
    assert_int_equal(mv_p2m_write_fault(d, 9100), MV_ENOENT);
    assert_int_equal(mv_p2m_write_fault(d, 1ull << 28), MV_ERANGE);
    assert_int_equal(mv_p2m_map_mmio(d, 9200, 1ull << 32, 1, MV_P2M_MT_UC), 0);
    assert_int_equal(mv_p2m_write_fault(d, 9200), MV_EPERM);
    unsigned out = 77;
    assert_int_equal(mv_p2m_handle_violation(d, 9100, MV_P2M_R, &out), 0);
    assert_int_equal(out, MV_P2M_NO_MEMORY);
    assert_int_equal(mv_p2m_handle_violation(d, 9200, MV_P2M_W, &out), 0);
    assert_int_equal(out, MV_P2M_EMULATE_MMIO);
    assert_int_equal(mv_p2m_handle_violation(d, 9000, MV_P2M_W, &out), 0);
    assert_int_equal(out, MV_P2M_DENIED);
    assert_int_equal(mv_p2m_handle_violation(d, 9000, MV_P2M_R, &out), 0);
    assert_int_equal(out, MV_P2M_RETRY);
    assert_int_equal(mv_p2m_handle_violation(d, 9000, 0, &out), MV_EINVAL);
    /* ram_rw whose rights were narrowed: a write is denied, not retried forever. */
    mv_mfn_t narrow;
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &narrow), 0);
    assert_int_equal(mv_p2m_set_entry(d, 9050, narrow, 0, MV_P2M_RAM_RW, MV_P2M_R | MV_P2M_X), 0);
    assert_int_equal(mv_p2m_write_fault(d, 9050), MV_EACCES);
    assert_int_equal(mv_p2m_handle_violation(d, 9050, MV_P2M_W, &out), 0);
    assert_int_equal(out, MV_P2M_DENIED);

    /* Guest-physical access: across pages; refused in full when any page is bad. */
    uint8_t buf[3 * MV_PAGE_SIZE], back[sizeof(buf)];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 7);
    mv_paddr_t gpa = (6000ull << MV_PAGE_SHIFT) + 100;
    assert_int_equal(mv_guest_phys_write(d, gpa, buf, sizeof(buf)), 0);
    assert_int_equal(mv_guest_phys_read(d, gpa, back, sizeof(back)), 0);
    assert_memory_equal(buf, back, sizeof(buf));
    uint8_t before[64], after[64];
    mv_paddr_t edge = (9199ull << MV_PAGE_SHIFT);
    mv_gfn_t g9199 = 9199;
    assert_int_equal(mv_populate_physmap(d, &g9199, 1, 0, MV_NODE_ANY, &done), 0);
    assert_int_equal(mv_guest_phys_read(d, edge, before, sizeof(before)), 0);
    assert_int_equal(mv_guest_phys_write(d, edge, buf, 2 * MV_PAGE_SIZE), MV_EFAULT); /* into mmio */
    assert_int_equal(mv_guest_phys_read(d, edge, after, sizeof(after)), 0);
    assert_memory_equal(before, after, sizeof(before));
    assert_int_equal(mv_guest_phys_read(d, 9100ull << MV_PAGE_SHIFT, back, 8), MV_EFAULT);
    assert_int_equal(mv_guest_phys_read(d, 9200ull << MV_PAGE_SHIFT, back, 8), MV_EFAULT);
    assert_int_equal(mv_guest_phys_write(d, 9000ull << MV_PAGE_SHIFT, buf, 8), MV_EACCES);
    assert_int_equal(mv_guest_phys_read(d, 9000ull << MV_PAGE_SHIFT, back, 8), 0);
    assert_int_equal(mv_guest_phys_read(d, ~0ull - 4, back, 8), MV_EFAULT);
    assert_int_equal(mv_guest_phys_write(d, 0, NULL, 8), MV_EINVAL);
    /* A frame typed as a page table is not written behind the validator's back. */
    struct mv_p2m_entry pt = look(d, 6000);
    assert_int_equal(mv_page_get_typed(d, pt.mfn, MV_PGT_L1), MV_PAGE_VALIDATE);
    assert_int_equal(mv_page_validated(d, pt.mfn), 0);
    assert_int_equal(mv_guest_phys_write(d, 6000ull << MV_PAGE_SHIFT, buf, 8), MV_EBUSY);
    assert_int_equal(mv_guest_phys_read(d, 6000ull << MV_PAGE_SHIFT, back, 8), 0);
    assert_int_equal(mv_page_put_typed(d, pt.mfn), 0);
    th_assert_audit_clean(h);
    assert_int_equal(mv_p2m_logdirty_disable(d), 0);
    assert_int_equal(mv_p2m_logdirty_disable(d), MV_EALREADY);
    th_assert_audit_clean(h);
    kill(d);
}

/* The audit names a writable page whose write would be lost. */
static void test_audit_catches_lost_write(void **state)
{
    (void)state;
    mv_domain_t *d = guest(4);
    static uint64_t bm[GFNS / 64];
    assert_int_equal(mv_p2m_logdirty_enable(d), 0);
    peek_all(d, bm);
    assert_int_equal(mv_p2m_write_fault(d, 5000), 0);
    struct mv_p2m *p = p2m_of(d);
    uint64_t c = 5000 / LD_CHUNK_GFNS, b = 5000 % LD_CHUNK_GFNS;
    uint64_t *w = (uint64_t *)mv_frame_va(h, p->ld_dir[c]) + b / 64;
    *w &= ~(1ull << (b % 64));
    assert_true(th_audit_has(h, "writable-but-clean"));
    *w |= 1ull << (b % 64);
    th_assert_audit_clean(h);
    kill(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dirty_log_model),
        cmocka_unit_test(test_populate_and_split_while_logging),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_audit_catches_lost_write),
    };
    return cmocka_run_group_tests_name("logdirty", tests, setup, teardown);
}
