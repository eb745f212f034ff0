/*
 * tests/test_heap.c - the per-node buddy heaps: orders, alignment, coalescing, zero
 * content, the decommit queue, fallback by distance, fault injection and bad input.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mm-internal.h"

#define MEM (64 * TH_MiB)
#define FRAMES (MEM >> MV_PAGE_SHIFT)

static struct mv_host_stats *stats_of(mv_host_t *h)
{
    static struct mv_host_stats st[2];
    static int which;
    struct mv_host_stats *s = &st[which ^= 1];
    memset(s, 0, sizeof(*s));
    s->size = sizeof(*s);
    assert_int_equal(mv_host_stats(h, s), 0);
    return s;
}

static int cmp_mfn(const void *a, const void *b)
{
    mv_mfn_t x = *(const mv_mfn_t *)a, y = *(const mv_mfn_t *)b;
    return x < y ? -1 : x > y;
}

static void test_every_order_aligned(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    for (unsigned order = 0; order <= 14; order++) {
        mv_mfn_t m;
        assert_int_equal(mv_frame_alloc(h, order, 0, 0, &m), 0);
        assert_int_equal(m & ((1ull << order) - 1), 0);
        assert_int_equal(mv_frame_node(h, m), 0);
        uint8_t *va = mv_frame_va(h, m);
        assert_non_null(va);
        memset(va, 0x5a, (size_t)MV_PAGE_SIZE << order);
        assert_true(stats_of(h)->node[0].allocated >= (1ull << order));
        assert_int_equal(mv_frame_free(h, m, order), 0);
    }
    assert_int_equal(mv_host_trim(h), 0);
    struct mv_host_stats *st = stats_of(h);
    assert_int_equal(st->node[0].allocated, 0);
    assert_int_equal(st->node[0].free, FRAMES);
    assert_int_equal(st->node[0].committed, 0);
    /* Everything merged back: 64 MiB is one order-14 block. */
    assert_int_equal(st->node[0].free_by_order[14], 1);
    for (unsigned o = 0; o < 14; o++)
        assert_int_equal(st->node[0].free_by_order[o], 0);
    th_host_destroy(h, tp);
}

static void test_exhaust_and_refill(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    size_t max = FRAMES >> 9;
    mv_mfn_t *m = calloc(max + 1, sizeof(*m));
    size_t n = 0;
    while (n <= max && mv_frame_alloc(h, 9, MV_NODE_ANY, 0, &m[n]) == 0)
        n++;
    assert_int_equal(n, max);
    mv_mfn_t extra = 12345;
    assert_int_equal(mv_frame_alloc(h, 0, MV_NODE_ANY, 0, &extra), MV_ENOMEM);
    assert_int_equal(extra, 12345);
    th_assert_audit_clean(h);
    qsort(m, n, sizeof(*m), cmp_mfn);
    for (size_t i = 1; i < n; i++)
        assert_true(m[i] >= m[i - 1] + 512);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(mv_frame_free(h, m[i], 9), 0);
    /* Freed blocks wait in the decommit queue, then come back. */
    assert_int_equal(mv_frame_alloc(h, 9, MV_NODE_ANY, 0, &m[0]), 0);
    assert_int_equal(mv_frame_free(h, m[0], 9), 0);
    assert_int_equal(mv_host_trim(h), 0);
    assert_int_equal(stats_of(h)->node[0].free, FRAMES);
    free(m);
    th_host_destroy(h, tp);
}

/* A dirty frame handed out again with MV_ALLOC_ZERO reads zero; known-zero ones are not
 * scrubbed. */
static void test_zero_content(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    mv_mfn_t m, again;
    assert_int_equal(mv_frame_alloc(h, 0, 0, MV_ALLOC_ZERO, &m), 0);
    assert_int_equal(stats_of(h)->scrubbed_frames, 0);
    uint8_t *va = mv_frame_va(h, m);
    memset(va, 0xee, MV_PAGE_SIZE);
    assert_int_equal(mv_frame_free(h, m, 0), 0);
    /* The slot cache hands the same dirty frame back at once: it must be scrubbed. */
    assert_int_equal(mv_frame_alloc(h, 0, 0, MV_ALLOC_ZERO, &again), 0);
    assert_int_equal(again, m);
    for (unsigned i = 0; i < MV_PAGE_SIZE; i++)
        assert_int_equal(va[i], 0);
    assert_int_equal(stats_of(h)->scrubbed_frames, 1);
    /* Without MV_ALLOC_ZERO nothing is scrubbed. */
    memset(va, 0xee, MV_PAGE_SIZE);
    assert_int_equal(mv_frame_free(h, again, 0), 0);
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, &again), 0);
    assert_int_equal(stats_of(h)->scrubbed_frames, 1);
    assert_int_equal(mv_frame_free(h, again, 0), 0);

    /* Large blocks go through the decommit queue and come back known zero. */
    assert_int_equal(mv_frame_alloc(h, 9, 0, 0, &m), 0);
    memset(mv_frame_va(h, m), 0x77, 512 * MV_PAGE_SIZE);
    assert_int_equal(mv_frame_free(h, m, 9), 0);
    assert_int_equal(mv_host_trim(h), 0);
    assert_true(atomic_load(&tp->decommit_frames) >= 512);
    assert_int_equal(mv_frame_alloc(h, 9, 0, MV_ALLOC_ZERO, &again), 0);
    assert_int_equal(stats_of(h)->scrubbed_frames, 1);
    const uint8_t *p = mv_frame_va(h, again);
    for (size_t i = 0; i < 512 * MV_PAGE_SIZE; i += 64)
        assert_int_equal(p[i], 0);
    assert_int_equal(mv_frame_free(h, again, 9), 0);
    th_host_destroy(h, tp);
}

/* When the platform fails a decommit, the frames stay committed, are marked dirty, and
 * are scrubbed when zero content is asked. */
static void test_decommit_failure(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    mv_mfn_t m;
    assert_int_equal(mv_frame_alloc(h, 4, 0, 0, &m), 0);
    memset(mv_frame_va(h, m), 0x11, 16 * MV_PAGE_SIZE);
    assert_int_equal(mv_frame_free(h, m, 4), 0);
    atomic_store(&tp->fail_decommit, 1);
    assert_int_equal(mv_host_trim(h), MV_EIO);
    assert_int_equal(stats_of(h)->node[0].committed, 16);
    assert_true(atomic_load(&tp->logs) >= 1);
    th_assert_audit_clean(h);
    /* Ask for every order-4 block until the dirty one comes back; it must read zero. */
    mv_mfn_t got[FRAMES / 16];
    size_t n = 0;
    while (n < FRAMES / 16 && mv_frame_alloc(h, 4, 0, MV_ALLOC_ZERO, &got[n]) == 0) {
        if (got[n] == m) {
            const uint8_t *p = mv_frame_va(h, m);
            for (size_t i = 0; i < 16 * MV_PAGE_SIZE; i++)
                assert_int_equal(p[i], 0);
        }
        n++;
    }
    assert_int_equal(n, FRAMES / 16);
    assert_int_equal(stats_of(h)->scrubbed_frames, 16);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(mv_frame_free(h, got[i], 4), 0);
    th_host_destroy(h, tp);
}

/* A frame waiting in the decommit queue is never handed out. */
static void test_pending_not_handed_out(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    mv_mfn_t a, b;
    assert_int_equal(mv_frame_alloc(h, 3, 0, 0, &a), 0);
    assert_int_equal(mv_frame_free(h, a, 3), 0);
    assert_int_equal(stats_of(h)->node[0].pending, 8);
    for (int i = 0; i < 64; i++) {
        assert_int_equal(mv_frame_alloc(h, 3, 0, 0, &b), 0);
        assert_true(b + 8 <= a || b >= a + 8);
    }
    th_assert_audit_clean(h);
    assert_int_equal(mv_host_drain(h), 0);
    assert_int_equal(stats_of(h)->node[0].pending, 0);
    th_host_destroy(h, tp);
}

static void test_bad_input(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    mv_mfn_t m = 777, a;
    assert_int_equal(mv_frame_alloc(h, MV_MAX_ORDER + 1, 0, 0, &m), MV_EINVAL);
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0x80, &m), MV_EINVAL);
    assert_int_equal(mv_frame_alloc(h, 0, 1, 0, &m), MV_ENODEV);
    assert_int_equal(mv_frame_alloc(h, 0, 4096, 0, &m), MV_ENODEV);
    assert_int_equal(mv_frame_alloc(h, 0, MV_NODE_ANY, MV_ALLOC_EXACT_NODE, &m), MV_EINVAL);
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, NULL), MV_EINVAL);
    assert_int_equal(mv_frame_alloc(NULL, 0, 0, 0, &m), MV_EINVAL);
    assert_int_equal(m, 777);
    /* A host of 64 MiB cannot give 1 GiB. */
    assert_int_equal(mv_frame_alloc(h, MV_MAX_ORDER, 0, 0, &m), MV_ENOMEM);

    struct mv_host_stats before = *stats_of(h);
    assert_int_equal(mv_frame_free(h, FRAMES, 0), MV_ERANGE);
    assert_int_equal(mv_frame_free(h, ~0ull, 0), MV_ERANGE);
    assert_int_equal(mv_frame_free(h, 0, 0), MV_EALREADY); /* never allocated */
    assert_int_equal(mv_frame_alloc(h, 2, 0, 0, &a), 0);
    assert_int_equal(mv_frame_free(h, a + 1, 0), MV_EINVAL);  /* a tail */
    assert_int_equal(mv_frame_free(h, a, 1), MV_EINVAL);      /* wrong order */
    assert_int_equal(mv_frame_free(h, a, MV_MAX_ORDER + 1), MV_EINVAL);
    assert_int_equal(mv_frame_free(h, a, 2), 0);
    assert_int_equal(mv_frame_free(h, a, 2), MV_EALREADY);    /* double free */
    /* A frame held by the engine, not the embedder, cannot be freed through the API. */
    mv_mfn_t internal;
    assert_int_equal(mv__heap_alloc(h, 0, 0, 0, MV_OWNER_INTERNAL, &internal), 0);
    assert_int_equal(mv_frame_free(h, internal, 0), MV_EPERM);
    /* Nor one still referenced. */
    mv_mfn_t ref;
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, &ref), 0);
    atomic_fetch_add(&mv__frame(h, ref)->count, 1);
    assert_int_equal(mv_frame_free(h, ref, 0), MV_EBUSY);
    atomic_fetch_sub(&mv__frame(h, ref)->count, 1);
    assert_int_equal(mv_frame_free(h, ref, 0), 0);
    mv__heap_free(h, internal, 0);
    assert_int_equal(mv_host_drain(h), 0);
    struct mv_host_stats *after = stats_of(h);
    assert_int_equal(after->node[0].free, before.node[0].free + before.node[0].pending +
                                              before.node[0].cached);
    assert_int_equal(mv_frame_va(h, FRAMES), NULL);
    assert_int_equal(mv_frame_node(h, FRAMES), MV_ERANGE);
    th_host_destroy(h, tp);
}

/* Four nodes whose distances are not in index order: fallback follows distance. */
#define TOPO4 "pack:4 numa:1 core:1 pu:1; distances=10,40,20,30,40,10,30,20,20,30,10,40,30,20,40,10"

static void test_fallback_by_distance(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(4 * 8 * TH_MiB, TOPO4, &tp);
    const struct mv_topology *t = mv_host_topology(h);
    assert_int_equal(t->nr_nodes, 4);
    uint64_t per_node = t->node[0].nr_frames;
    assert_int_equal(per_node, 2048);
    /* Empty node 0 exactly. */
    mv_mfn_t *held = calloc(per_node, sizeof(*held));
    for (uint64_t i = 0; i < per_node / 512; i++)
        assert_int_equal(mv_frame_alloc(h, 9, 0, MV_ALLOC_EXACT_NODE, &held[i]), 0);
    mv_mfn_t m;
    assert_int_equal(mv_frame_alloc(h, 9, 0, MV_ALLOC_EXACT_NODE, &m), MV_ENOMEM);
    /* Node 0's nearest other node is 2 (20), then 3 (30), then 1 (40). */
    assert_int_equal(mv_frame_alloc(h, 9, 0, 0, &m), 0);
    assert_int_equal(mv_frame_node(h, m), 2);
    mv_mfn_t rest[8];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mv_frame_alloc(h, 9, 0, 0, &rest[i]), 0);
        assert_int_equal(mv_frame_node(h, rest[i]), 2);
    }
    assert_int_equal(mv_frame_alloc(h, 9, 0, 0, &rest[3]), 0);
    assert_int_equal(mv_frame_node(h, rest[3]), 3);
    /* Order-0 goes through the slot cache the same way. */
    mv_mfn_t small;
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, &small), 0);
    assert_int_equal(mv_frame_node(h, small), 3);
    assert_int_equal(stats_of(h)->node[2].alloc_fallback, 4);
    assert_int_equal(mv_frame_free(h, small, 0), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(mv_frame_free(h, rest[i], 9), 0);
    assert_int_equal(mv_frame_free(h, m, 9), 0);
    for (uint64_t i = 0; i < per_node / 512; i++)
        assert_int_equal(mv_frame_free(h, held[i], 9), 0);
    free(held);
    assert_int_equal(mv_host_drain(h), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(stats_of(h)->node[i].free, per_node);
    th_host_destroy(h, tp);
}

static void test_fault_injection(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    assert_int_equal(mv_host_inject_failure(h, "no.such.point", 0, 1), MV_ENOENT);
    if (!MV_HAVE_FAULT_INJECTION) {
        assert_int_equal(mv_host_inject_failure(h, "heap.alloc", 0, 1), MV_ENOSYS);
        th_host_destroy(h, tp);
        return;
    }
    assert_int_equal(mv_host_inject_failure(h, "heap.alloc", 2, 1), 0);
    mv_mfn_t m[4];
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, &m[0]), 0);
    assert_int_equal(mv_frame_alloc(h, 5, 0, 0, &m[1]), 0);
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, &m[2]), MV_ENOMEM);
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, &m[2]), 0);
    assert_int_equal(mv_host_inject_failure(h, "heap.alloc", 0, 0), 0);
    assert_int_equal(mv_frame_free(h, m[0], 0), 0);
    assert_int_equal(mv_frame_free(h, m[1], 5), 0);
    assert_int_equal(mv_frame_free(h, m[2], 0), 0);
    th_host_destroy(h, tp);
}

/* Seeded random allocations and frees of every order: no frame is handed out twice, the
 * audit stays clean, and everything merges back at the end. */
static void test_random_differential(void **state)
{
    (void)state;
    struct th_platform *tp;
    struct mv_host_config cfg = {.mem_bytes = MEM, .slot_cache_frames = 8, .decommit_batch = 64};
    mv_host_t *h = th_host_create_cfg(&cfg, "pack:2 numa:1 core:1 pu:1", &tp);
    struct th_rng rng = {.s = 0x6d656d76697274ull};
    enum { SLOTS = 512 };
    struct {
        mv_mfn_t mfn;
        unsigned order;
        bool live;
    } held[SLOTS] = {{0}};
    uint8_t *owner = calloc(FRAMES, 1);
    uint64_t total = mv_host_topology(h)->node[1].first_mfn + mv_host_topology(h)->node[1].nr_frames;
    for (int step = 0; step < 20000; step++) {
        unsigned i = (unsigned)th_rand_below(&rng, SLOTS);
        if (held[i].live) {
            for (uint64_t f = 0; f < (1ull << held[i].order); f++)
                owner[held[i].mfn + f] = 0;
            assert_int_equal(mv_frame_free(h, held[i].mfn, held[i].order), 0);
            held[i].live = false;
        } else {
            unsigned order = (unsigned)th_rand_below(&rng, 8);
            uint32_t node = th_rand_below(&rng, 3) == 0 ? MV_NODE_ANY
                                                         : (uint32_t)th_rand_below(&rng, 2);
            mv_mfn_t m;
            int rc = mv_frame_alloc(h, order, node, 0, &m);
            if (rc == MV_ENOMEM)
                continue;
            assert_int_equal(rc, 0);
            assert_true(m + (1ull << order) <= total);
            for (uint64_t f = 0; f < (1ull << order); f++) {
                assert_int_equal(owner[m + f], 0);
                owner[m + f] = 1;
            }
            held[i].mfn = m;
            held[i].order = order;
            held[i].live = true;
        }
        if (step % 4000 == 0)
            th_assert_audit_clean(h);
    }
    th_assert_audit_clean(h);
    for (unsigned i = 0; i < SLOTS; i++)
        if (held[i].live)
            assert_int_equal(mv_frame_free(h, held[i].mfn, held[i].order), 0);
    assert_int_equal(mv_host_drain(h), 0);
    struct mv_host_stats *st = stats_of(h);
    assert_int_equal(st->free_frames, st->total_frames);
    assert_int_equal(st->committed_frames, 0);
    for (uint32_t n = 0; n < 2; n++) {
        assert_int_equal(st->node[n].free_by_order[13], 1); /* 32 MiB per node */
        for (unsigned o = 0; o < 13; o++)
            assert_int_equal(st->node[n].free_by_order[o], 0);
    }
    free(owner);
    th_host_destroy(h, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_order_aligned),
        cmocka_unit_test(test_exhaust_and_refill),
        cmocka_unit_test(test_zero_content),
        cmocka_unit_test(test_decommit_failure),
        cmocka_unit_test(test_pending_not_handed_out),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_fallback_by_distance),
        cmocka_unit_test(test_fault_injection),
        cmocka_unit_test(test_random_differential),
    };
    return cmocka_run_group_tests_name("heap", tests, NULL, NULL);
}
