/*
 * tests/test_shadow_pool.c - the self-sizing shadow pool: it grows while evicted shadows
 * keep being built again, shrinks back when the guest needs less (by itself as faults
 * come, and at once with mv_shadow_trim), never leaves [floor, ceiling], and the frames it
 * gives up go back to the host's heaps. Config bounds are checked at creation. Every
 * scenario ends with a clean audit.
 */
#include <string.h>

#include "harness.h"
#include "shadow-internal.h"
#include "shadow_helpers.h"

static mv_host_t *h;
static struct th_platform *tp;

/* Guest: L4 at gfn 1, L3 at 2, L2 at 3..4, L1s from gfn 16 (NL1 of them), data from 1024. */
#define NL1 600u
#define L1_BASE 16u
#define DATA 1024u

static int setup(void **state)
{
    (void)state;
    h = th_host_create(512 * TH_MiB, NULL, &tp);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    th_host_destroy(h, tp);
    return 0;
}

/* Populate (or decrease) gfns [from, to) in 2 MiB extents. */
static void extents(mv_domain_t *d, mv_gfn_t from, mv_gfn_t to, bool populate)
{
    for (mv_gfn_t g = from; g < to; g += 512) {
        uint64_t done;
        int rc;
        do
            rc = populate ? mv_populate_physmap(d, &g, 1, 9, MV_NODE_ANY, &done)
                          : mv_decrease_reservation(d, &g, 1, 9, &done);
        while (rc == MV_EAGAIN);
        assert_int_equal(rc, 0);
    }
}

/* A self-sizing domain (floor, ceiling; max_pages) owning its first 4096 gfns, with NL1 L1
 * tables, each mapping 4 data pages. */
static mv_domain_t *pool_dom(uint32_t id, uint64_t floor, uint64_t ceiling, uint64_t max_pages)
{
    struct mv_domain_config c = {.size = sizeof(c), .domid = id, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_SHADOW, .nr_vcpus = 2,
                                 .max_pages = max_pages, .node_affinity = MV_NODE_ANY,
                                 .shadow_pool_pages = floor, .shadow_pool_max_pages = ceiling};
    mv_domain_t *d;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    extents(d, 0, 4096, true);
    const uint64_t table = PTE_P | PTE_W | PTE_U | PTE_A;
    gpoke(d, 1, 0, (2ull << 12) | table);
    gpoke(d, 2, 0, (3ull << 12) | table);
    gpoke(d, 2, 1, (4ull << 12) | table);
    for (unsigned t = 0; t < NL1; t++) {
        gpoke(d, 3 + t / 512, t % 512, ((uint64_t)(L1_BASE + t) << 12) | table);
        for (unsigned i = 0; i < 4; i++)
            gpoke(d, L1_BASE + t, i, ((uint64_t)(DATA + (4 * t + i) % 3000) << 12) | table |
                                         PTE_D);
    }
    return d;
}

/* The address of data page i of L1 table t. */
static uint64_t va_of(unsigned t, unsigned i)
{
    return ((uint64_t)t << 21) + ((uint64_t)i << 12);
}

static uint64_t host_free(void)
{
    struct mv_host_stats hs = {.size = sizeof(hs)};
    assert_int_equal(mv_host_stats(h, &hs), 0);
    return hs.free_frames;
}

static void check_bounds(mv_domain_t *d)
{
    struct mv_shadow_stats st = shd_stats(d);
    assert_true(st.budget >= st.pool_floor && st.budget <= st.pool_ceiling);
    assert_true(st.pool_frames <= st.pool_ceiling);
}

static void test_grow_and_shrink(void **state)
{
    (void)state;
    mv_domain_t *d = pool_dom(1, 64, 1024, 4096);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    (void)shd_cr3(v, 1);
    struct mv_shadow_stats st = shd_stats(d);
    assert_int_equal(st.pool_floor, 64);
    assert_int_equal(st.pool_ceiling, 1024);
    assert_int_equal(st.budget, 64);
    uint64_t free0 = host_free();

    /* A working set of 600 L1 tables, walked round and round: evictions, rebuilds, growth. */
    for (unsigned round = 0; round < 10; round++)
        for (unsigned t = 0; t < NL1; t++) {
            assert_int_equal(shd_fault(v, va_of(t, round % 4), MV_PFEC_U, NULL, NULL),
                             MV_SHADOW_FIXED);
            check_bounds(d);
        }
    st = shd_stats(d);
    print_message("grown: budget %llu, pool %llu, %llu grows, %llu rebuilds, %llu evictions\n",
                  (unsigned long long)st.budget, (unsigned long long)st.pool_frames,
                  (unsigned long long)st.pool_grows, (unsigned long long)st.rebuilds,
                  (unsigned long long)st.evictions);
    assert_true(st.pool_grows > 0 && st.rebuilds > 0);
    assert_true(st.budget > NL1);
    assert_true(host_free() + st.pool_frames - 64 <= free0); /* drawn from the heap */
    th_assert_audit_clean(h);
    /* Once grown to fit, the working set no longer evicts. */
    uint64_t ev = st.evictions;
    for (unsigned t = 0; t < NL1; t++)
        assert_int_equal(shd_fault(v, va_of(t, 1), MV_PFEC_U, NULL, NULL), MV_SHADOW_FIXED);
    assert_int_equal(shd_stats(d).evictions, ev);

    /* The guest narrows to a few pages: after a shrink window the budget falls. */
    mv_shadow_blow(d);
    uint64_t grown = shd_stats(d).budget, frames = shd_stats(d).pool_frames;
    for (unsigned k = 0; k < 2 * SH_SHRINK_WINDOW; k++) {
        uint64_t va = va_of(k % 8, 0);
        assert_int_equal(shd_fault(v, va, MV_PFEC_U, NULL, NULL), MV_SHADOW_FIXED);
        assert_int_equal(mv_shadow_invlpg(v, va), 0);
    }
    st = shd_stats(d);
    print_message("shrunk: budget %llu -> %llu, pool %llu -> %llu, %llu shrinks\n",
                  (unsigned long long)grown, (unsigned long long)st.budget,
                  (unsigned long long)frames, (unsigned long long)st.pool_frames,
                  (unsigned long long)st.pool_shrinks);
    assert_true(st.pool_shrinks > 0);
    assert_true(st.budget < grown && st.budget >= st.pool_floor);
    assert_true(st.pool_frames <= st.budget);
    assert_true(host_free() > free0 - st.pool_frames - 16); /* frames went back */
    check_bounds(d);
    th_assert_audit_clean(h);
    shd_kill(h, d);
}

static void test_trim_now(void **state)
{
    (void)state;
    mv_domain_t *d = pool_dom(2, 48, 800, 4096);
    mv_vcpu_t *v = mv_domain_vcpu(d, 1);
    (void)shd_cr3(v, 1);
    for (unsigned round = 0; round < 3; round++)
        for (unsigned t = 0; t < NL1; t++)
            assert_int_equal(shd_fault(v, va_of(t, 2), MV_PFEC_U, NULL, NULL), MV_SHADOW_FIXED);
    uint64_t before = shd_stats(d).pool_frames, free_before = host_free();
    assert_true(before > 48);
    /* Trimming while the shadows live keeps what they need. */
    assert_int_equal(mv_shadow_trim(d), 0);
    struct mv_shadow_stats st = shd_stats(d);
    assert_true(st.pool_frames >= st.shadows[1] + st.shadows[2]);
    /* Dropped shadows' frames go back to the heap at once. */
    assert_int_equal(mv_shadow_blow(d), 0);
    assert_int_equal(mv_shadow_trim(d), 0);
    st = shd_stats(d);
    assert_int_equal(st.budget, st.pool_floor);
    assert_true(st.pool_frames <= st.pool_floor);
    assert_int_equal(host_free() - free_before, before - st.pool_frames);
    /* The walk still works, and the pool grows again when it must. */
    for (unsigned t = 0; t < NL1; t += 7)
        assert_int_equal(shd_fault(v, va_of(t, 3), MV_PFEC_U, NULL, NULL), MV_SHADOW_FIXED);
    check_bounds(d);
    assert_int_equal(mv_shadow_trim(NULL), MV_EINVAL);
    th_assert_audit_clean(h);
    shd_kill(h, d);
}

/* A fixed pool (floor == ceiling) never moves, however hard it is pressed. */
static void test_fixed(void **state)
{
    (void)state;
    mv_domain_t *d = pool_dom(3, 40, 40, 4096);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    (void)shd_cr3(v, 1);
    for (unsigned round = 0; round < 2; round++)
        for (unsigned t = 0; t < NL1; t++)
            assert_int_equal(shd_fault(v, va_of(t, 0), MV_PFEC_U, NULL, NULL), MV_SHADOW_FIXED);
    struct mv_shadow_stats st = shd_stats(d);
    assert_int_equal(st.budget, 40);
    assert_int_equal(st.pool_grows, 0);
    assert_true(st.evictions > 0 && st.pool_frames <= 40);
    shd_kill(h, d);
}

/*
 * No ceiling configured: the pool follows the guest's size. Populated to a 16th of its
 * max_pages, the guest's pool stops growing at a 64th of what it owns plus 256; populated
 * further it grows on; ballooned down again, the next shrink decision brings the budget
 * back under the limit and the frames go back to the heap.
 */
static void test_follows_guest_size(void **state)
{
    (void)state;
    mv_domain_t *d = pool_dom(12, 64, 0, 65536);
    mv_vcpu_t *v = mv_domain_vcpu(d, 0);
    (void)shd_cr3(v, 1);
    struct mv_shadow_stats st = shd_stats(d);
    assert_int_equal(st.pool_ceiling, 65536 / 64 + 256);
    const uint64_t small = 4096 / 64 + 256;
    for (unsigned round = 0; round < 6; round++)
        for (unsigned t = 0; t < NL1; t++)
            assert_int_equal(shd_fault(v, va_of(t, 0), MV_PFEC_U, NULL, NULL), MV_SHADOW_FIXED);
    st = shd_stats(d);
    assert_true(st.pool_grows > 0);
    assert_int_equal(st.budget, small); /* wanted more, held to the guest's size */
    /* Populated to 32768 pages: the limit is 768, and the working set gets what it needs. */
    extents(d, 4096, 32768, true);
    for (unsigned round = 0; round < 6; round++)
        for (unsigned t = 0; t < NL1; t++)
            assert_int_equal(shd_fault(v, va_of(t, 0), MV_PFEC_U, NULL, NULL), MV_SHADOW_FIXED);
    st = shd_stats(d);
    assert_true(st.budget > small && st.budget <= 32768 / 64 + 256);
    uint64_t grown = st.pool_frames;
    /* Ballooned down to 4096 pages: a shrink window later the pool is back under 320. */
    uint64_t free0 = host_free();
    extents(d, 4096, 32768, false);
    uint64_t free1 = host_free();
    for (unsigned k = 0; k < SH_SHRINK_WINDOW + NL1; k++)
        assert_int_equal(shd_fault(v, va_of(k % NL1, 0), MV_PFEC_U, NULL, NULL), MV_SHADOW_FIXED);
    assert_int_equal(mv_shadow_trim(d), 0);
    st = shd_stats(d);
    assert_true(st.budget <= small && st.budget >= st.pool_floor);
    assert_true(st.pool_frames <= small && st.pool_frames < grown);
    assert_true(host_free() > free1 && free1 > free0);
    check_bounds(d);
    shd_kill(h, d);
}

static void test_config_bounds(void **state)
{
    (void)state;
    struct mv_domain_config c = {.size = sizeof(c), .domid = 9, .type = MV_DOMAIN_HVM,
                                 .paging = MV_PAGING_SHADOW, .nr_vcpus = 2, .max_pages = 1024,
                                 .node_affinity = MV_NODE_ANY};
    mv_domain_t *d;
    c.shadow_pool_pages = 100;
    c.shadow_pool_max_pages = 99; /* under the floor */
    assert_int_equal(mv_domain_create(h, &c, &d), MV_EINVAL);
    c.shadow_pool_max_pages = (uint64_t)MV_SHADOW_POOL_MAX + 1;
    assert_int_equal(mv_domain_create(h, &c, &d), MV_EINVAL);
    c.shadow_pool_pages = 0;
    c.shadow_pool_max_pages = 2 * MV_SHADOW_FLOOR_PER_VCPU - 1; /* under the vCPUs' need */
    assert_int_equal(mv_domain_create(h, &c, &d), MV_EINVAL);
    c.paging = MV_PAGING_HAP;
    c.shadow_pool_max_pages = 64;
    assert_int_equal(mv_domain_create(h, &c, &d), MV_EINVAL);
    /* Defaults: 64 + 16 per vCPU, and a 64th of the guest plus 256. */
    c.paging = MV_PAGING_SHADOW;
    c.shadow_pool_max_pages = 0;
    c.max_pages = 64 * 1024;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    struct mv_shadow_stats st = shd_stats(d);
    assert_int_equal(st.pool_floor, 64 + 2 * MV_SHADOW_FLOOR_PER_VCPU);
    assert_int_equal(st.pool_ceiling, 1024 + 256);
    assert_int_equal(st.budget, st.pool_floor);
    shd_kill(h, d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grow_and_shrink),
        cmocka_unit_test(test_trim_now),
        cmocka_unit_test(test_fixed),
        cmocka_unit_test(test_follows_guest_size),
        cmocka_unit_test(test_config_bounds),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
