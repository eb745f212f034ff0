/*
 * tests/test_host.c - host creation and its configuration, platform checks, statistics
 * and the frame table's layout.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mm-internal.h"

static void test_config_refused(void **state)
{
    (void)state;
    mv_host_t *h = (mv_host_t *)(uintptr_t)0x1234;
    struct mv_host_config cfg = {.size = sizeof(cfg), .mem_bytes = 64 * TH_MiB};
    assert_int_equal(mv_host_create(NULL, &h), MV_EINVAL);
    assert_int_equal(mv_host_create(&cfg, NULL), MV_EINVAL);
    cfg.size = sizeof(size_t);
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    /* A newer caller's struct with a field this library does not know about. */
    struct {
        struct mv_host_config c;
        uint64_t future;
    } big = {.c = {.size = sizeof(big), .mem_bytes = 64 * TH_MiB}, .future = 1};
    assert_int_equal(mv_host_create(&big.c, &h), MV_E2BIG);
    cfg.size = sizeof(cfg);
    cfg.mem_bytes = 0;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    cfg.mem_bytes = 64 * TH_MiB;
    cfg.topology = "this is not a topology";
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    cfg.topology = NULL;
    cfg.slot_cache_frames = 1u << 20;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    assert_ptr_equal(h, (mv_host_t *)(uintptr_t)0x1234);
    /* A zero tail in a bigger struct is fine. */
    big.future = 0;
    assert_int_equal(mv_host_create(&big.c, &h), 0);
    th_assert_audit_clean(h);
    mv_host_destroy(h);
}

static void test_platform_refused(void **state)
{
    (void)state;
    struct th_platform *tp = th_platform_create(16 * TH_MiB, NULL);
    struct mv_platform saved = tp->p;
    struct mv_topology topo = *tp->p.topology;
    struct mv_host_config cfg = {.size = sizeof(cfg), .platform = &tp->p};
    mv_host_t *h = NULL;

    tp->p.size = 8;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    tp->p = saved;
    tp->p.meta_alloc = NULL;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    tp->p = saved;
    tp->p.slot_id = NULL;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    tp->p = saved;
    tp->p.max_slots = MV_MAX_SLOTS + 1;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    /* Topologies: no node, overlapping ranges, a missing mapping, bad distances. */
    struct mv_topology bad = topo;
    tp->p = saved;
    tp->p.topology = &bad;
    bad.nr_nodes = 0;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    bad = topo;
    bad.nr_nodes = 2;
    bad.node[1] = bad.node[0];
    bad.distance[0][1] = bad.distance[1][0] = 20;
    bad.distance[1][1] = 10;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    bad = topo;
    bad.node[0].base = NULL;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    bad = topo;
    bad.distance[0][0] = 0;
    assert_int_equal(mv_host_create(&cfg, &h), MV_EINVAL);
    assert_null(h);
    tp->p = saved;
    assert_int_equal(mv_host_create(&cfg, &h), 0);
    assert_ptr_equal(mv_host_platform(h), &tp->p);
    th_host_destroy(h, tp);
}

/* Metadata allocation failing at every point of creation leaves nothing behind. */
static void test_create_unwinds(void **state)
{
    (void)state;
    struct th_platform *tp = th_platform_create(16 * TH_MiB, "pack:2 numa:1 core:1 pu:1");
    struct mv_host_config cfg = {.size = sizeof(cfg), .platform = &tp->p};
    struct mv_posix_stats ps = {.size = sizeof(ps)};
    assert_int_equal(mv_posix_platform_stats(tp->posix, &ps), 0);
    uint64_t meta0 = ps.meta_bytes;
    /* Fail the host struct, then each node, each frame table, the caches, ... in turn. */
    mv_host_t *h = NULL;
    int failures = 0;
    for (int64_t n = 0;; n++) {
        atomic_store(&tp->meta_fail_in, n);
        int rc = mv_host_create(&cfg, &h);
        atomic_store(&tp->meta_fail_in, -1);
        assert_int_equal(mv_posix_platform_stats(tp->posix, &ps), 0);
        if (rc == 0)
            break;
        assert_int_equal(rc, MV_ENOMEM);
        assert_null(h);
        assert_int_equal(ps.meta_bytes, meta0);
        failures++;
    }
    assert_true(failures >= 6); /* host, 2 nodes, 2 frame tables, caches */
    mv_host_destroy(h);
    assert_int_equal(mv_posix_platform_stats(tp->posix, &ps), 0);
    assert_int_equal(ps.meta_bytes, meta0);
    th_platform_destroy(tp);
}

static void test_layout_and_stats(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(64 * TH_MiB, "pack:2 numa:1 core:2 pu:1", &tp);
    const struct mv_topology *t = mv_host_topology(h);
    assert_int_equal(t->nr_nodes, 2);
    /* Frame numbers run contiguously across nodes in node order. */
    assert_int_equal(t->node[0].first_mfn, 0);
    assert_int_equal(t->node[1].first_mfn, t->node[0].nr_frames);
    assert_int_equal(t->node[0].nr_frames + t->node[1].nr_frames, 16384);
    assert_int_equal(mv_frame_node(h, 0), 0);
    assert_int_equal(mv_frame_node(h, t->node[1].first_mfn), 1);
    assert_ptr_equal(mv_frame_va(h, t->node[1].first_mfn + 3),
                     (uint8_t *)t->node[1].base + 3 * MV_PAGE_SIZE);

    struct mv_host_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_host_stats(h, &st), 0);
    assert_int_equal(st.nr_nodes, 2);
    assert_int_equal(st.total_frames, 16384);
    assert_int_equal(st.free_frames, 16384);
    assert_int_equal(st.committed_frames, 0);
    /* Exactly 32 bytes of descriptor per frame: 8 MiB per GiB managed. */
    assert_int_equal(st.frametable_bytes, 16384 * 32);
    assert_true(sizeof(struct mv_frame) == 32);
    assert_true(st.overhead_bytes >= st.frametable_bytes + st.heap_meta_bytes);

    mv_mfn_t m;
    assert_int_equal(mv_frame_alloc(h, 9, 1, 0, &m), 0);
    assert_int_equal(mv_host_stats(h, &st), 0);
    assert_int_equal(st.node[1].allocated, 512);
    assert_int_equal(st.node[1].committed, 512);
    assert_int_equal(st.node[0].allocated, 0);
    assert_int_equal(st.free_frames, 16384 - 512);
    assert_int_equal(mv_frame_free(h, m, 9), 0);

    struct mv_host_stats small = {.size = 8};
    assert_int_equal(mv_host_stats(h, &small), MV_EINVAL);
    assert_int_equal(mv_host_stats(h, NULL), MV_EINVAL);
    struct mv_audit_report rep = {.size = 4};
    assert_int_equal(mv_host_audit(h, &rep), MV_EINVAL);
    assert_int_equal(mv_host_audit(h, NULL), 0);
    th_host_destroy(h, tp);
}

/* An embedder's own platform, with holes between node ranges and metadata from malloc. */
static void *plain_alloc(const struct mv_platform *p, size_t size, size_t align)
{
    (void)p;
    void *ptr = aligned_alloc(align, (size + align - 1) & ~(align - 1));
    if (ptr)
        memset(ptr, 0, size);
    return ptr;
}

static void plain_free(const struct mv_platform *p, void *ptr, size_t size)
{
    (void)p;
    (void)size;
    free(ptr);
}

static int plain_decommit(const struct mv_platform *p, mv_mfn_t first, uint64_t count)
{
    const struct mv_topology *t = p->topology;
    for (uint32_t i = 0; i < t->nr_nodes; i++) {
        if (first - t->node[i].first_mfn < t->node[i].nr_frames) {
            memset((uint8_t *)t->node[i].base + ((first - t->node[i].first_mfn) << MV_PAGE_SHIFT),
                   0, count << MV_PAGE_SHIFT);
            return 0;
        }
    }
    return MV_ERANGE;
}

static uint64_t plain_clock(const struct mv_platform *p)
{
    (void)p;
    return 1;
}

static uint32_t plain_slot(const struct mv_platform *p)
{
    (void)p;
    return MV_SLOT_NONE; /* a platform without slots still works, on the slow path */
}

static void test_own_platform_with_holes(void **state)
{
    (void)state;
    static struct mv_topology topo;
    memset(&topo, 0, sizeof(topo));
    topo.nr_nodes = 2;
    uint8_t *mem0 = aligned_alloc(4096, 4 * TH_MiB), *mem1 = aligned_alloc(4096, 2 * TH_MiB);
    memset(mem0, 0, 4 * TH_MiB);
    memset(mem1, 0, 2 * TH_MiB);
    topo.node[0] = (struct mv_node_desc){.first_mfn = 0x100, .nr_frames = 1024, .base = mem0};
    topo.node[1] = (struct mv_node_desc){.first_mfn = 0x10000, .nr_frames = 512, .base = mem1};
    topo.distance[0][0] = topo.distance[1][1] = 10;
    topo.distance[0][1] = topo.distance[1][0] = 21;
    struct mv_platform p = {.size = sizeof(p), .meta_alloc = plain_alloc, .meta_free = plain_free,
                            .topology = &topo, .mem_decommit = plain_decommit,
                            .clock_ns = plain_clock, .max_slots = 1, .slot_id = plain_slot};
    struct mv_host_config cfg = {.size = sizeof(cfg), .platform = &p};
    mv_host_t *h;
    assert_int_equal(mv_host_create(&cfg, &h), 0);
    assert_int_equal(mv_frame_node(h, 0xff), MV_ERANGE);
    assert_int_equal(mv_frame_node(h, 0x100), 0);
    assert_int_equal(mv_frame_node(h, 0x500), MV_ERANGE); /* the hole */
    assert_int_equal(mv_frame_node(h, 0x10000 + 511), 1);
    assert_int_equal(mv_frame_free(h, 0x600, 0), MV_ERANGE);
    /* 0x100 is aligned to order 8 at most: the node carves 0x100-0x1ff, 0x200-0x3ff, ... */
    mv_mfn_t m;
    assert_int_equal(mv_frame_alloc(h, 9, 0, MV_ALLOC_EXACT_NODE, &m), 0);
    assert_int_equal(m & 511, 0);
    assert_true(m >= 0x100 && m + 512 <= 0x500);
    mv_mfn_t small[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(mv_frame_alloc(h, 0, 1, 0, &small[i]), 0);
        assert_int_equal(mv_frame_node(h, small[i]), 1);
    }
    th_assert_audit_clean(h);
    for (int i = 0; i < 4; i++)
        assert_int_equal(mv_frame_free(h, small[i], 0), 0);
    assert_int_equal(mv_frame_free(h, m, 9), 0);
    assert_int_equal(mv_host_drain(h), 0);
    struct mv_host_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_host_stats(h, &st), 0);
    assert_int_equal(st.free_frames, 1536);
    th_assert_audit_clean(h);
    mv_host_destroy(h);
    free(mem0);
    free(mem1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_refused),
        cmocka_unit_test(test_platform_refused),
        cmocka_unit_test(test_create_unwinds),
        cmocka_unit_test(test_layout_and_stats),
        cmocka_unit_test(test_own_platform_with_holes),
    };
    return cmocka_run_group_tests_name("host", tests, NULL, NULL);
}
