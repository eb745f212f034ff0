/*
 * tests/test_audit.c - the machine part of mv_host_audit(): each invariant broken on
 * purpose through the frame table, named by the audit, then restored and clean again.
 */
#include <string.h>

#include "harness.h"
#include "mm-internal.h"

static mv_host_t *h;
static struct th_platform *tp;

static int setup(void **state)
{
    (void)state;
    h = th_host_create(32 * TH_MiB, NULL, &tp);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    th_host_destroy(h, tp);
    return 0;
}

/* A free block of at least order 1 and its node. */
static struct mv_heap_node *free_block(unsigned *order, uint32_t *idx)
{
    struct mv_heap_node *n = h->node[0];
    for (unsigned o = MV_MAX_ORDER + 1; o-- > 1;) {
        if (n->free_head[o] != MV_IDX_NIL) {
            *order = o;
            *idx = n->free_head[o];
            return n;
        }
    }
    fail_msg("no free block");
    return NULL;
}

#define EXPECT_NAMED(what)                       \
    do {                                         \
        assert_true(th_audit_has(h, what));      \
    } while (0)

static void test_free_frame_owned(void **state)
{
    (void)state;
    unsigned o = 0;
    uint32_t idx = 0;
    struct mv_heap_node *n = free_block(&o, &idx);
    struct mv_frame *tail = &n->ft[idx + 1];
    atomic_store(&tail->owner, MV_OWNER_ANON);
    EXPECT_NAMED("free-frame-owned");
    atomic_store(&tail->owner, MV_OWNER_FREE);
    th_assert_audit_clean(h);
}

static void test_free_frame_referenced(void **state)
{
    (void)state;
    unsigned o = 0;
    uint32_t idx = 0;
    struct mv_heap_node *n = free_block(&o, &idx);
    atomic_store(&n->ft[idx + 1].count, 1);
    EXPECT_NAMED("free-frame-referenced");
    atomic_store(&n->ft[idx + 1].count, 0);
    th_assert_audit_clean(h);
}

static void test_counts(void **state)
{
    (void)state;
    struct mv_heap_node *n = h->node[0];
    n->free_frames++;
    EXPECT_NAMED("heap-free-count");
    EXPECT_NAMED("states-do-not-add-up");
    n->free_frames--;
    n->free_blocks[3]++;
    EXPECT_NAMED("heap-order-count");
    n->free_blocks[3]--;
    n->free_dirty++;
    EXPECT_NAMED("heap-dirty-count");
    n->free_dirty--;
    n->pending_frames += 8;
    EXPECT_NAMED("pending-count");
    n->pending_frames -= 8;
    th_assert_audit_clean(h);
}

static void test_block_shape(void **state)
{
    (void)state;
    unsigned o = 0;
    uint32_t idx = 0;
    struct mv_heap_node *n = free_block(&o, &idx);
    uint32_t fl = atomic_load(&n->ft[idx].flags);
    atomic_store(&n->ft[idx].flags, (fl & ~MV_PGF_ORDER_MASK) | ((o - 1) << MV_PGF_ORDER_SHIFT));
    EXPECT_NAMED("free-block-head-order");
    atomic_store(&n->ft[idx].flags, fl);
    atomic_store(&n->ft[idx + 1].flags, MV_PGF_HEAD);
    EXPECT_NAMED("free-block-inner-head");
    atomic_store(&n->ft[idx + 1].flags, 0);
    uint64_t link = atomic_load(&n->ft[idx].link);
    atomic_store(&n->ft[idx].link, (link & ~0xffffffffull) | 5);
    EXPECT_NAMED("free-list-prev-broken");
    atomic_store(&n->ft[idx].link, link);
    th_assert_audit_clean(h);
}

static void test_held_frames(void **state)
{
    (void)state;
    mv_mfn_t m;
    assert_int_equal(mv_frame_alloc(h, 1, 0, 0, &m), 0);
    struct mv_frame *head = mv__frame(h, m), *tail = mv__frame(h, m + 1);
    /* A held frame that claims to be free is on no list. */
    atomic_store(&tail->owner, MV_OWNER_FREE);
    EXPECT_NAMED("idle-frame-lost");
    atomic_store(&tail->owner, MV_OWNER_INTERNAL);
    EXPECT_NAMED("held-block-mixed-owner");
    atomic_store(&tail->owner, 0xffff4321u);
    EXPECT_NAMED("frame-owner-unknown");
    atomic_store(&tail->owner, MV_OWNER_ANON);
    uint32_t fl = atomic_load(&head->flags);
    atomic_store(&head->flags, 0);
    EXPECT_NAMED("held-frame-without-head");
    atomic_store(&head->flags, fl);
    th_assert_audit_clean(h);
    assert_int_equal(mv_frame_free(h, m, 1), 0);
    th_assert_audit_clean(h);
}

static void test_two_lists(void **state)
{
    (void)state;
    mv_mfn_t m;
    /* Put a frame in the caller's slot cache, then plant a free frame beside it. */
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, &m), 0);
    assert_int_equal(mv_frame_free(h, m, 0), 0);
    uint32_t slot = h->plat->slot_id(h->plat);
    struct mv_slot_cache *c = mv__slot_cache(h, slot, 0);
    uint32_t cnt = atomic_load(&c->n);
    assert_true(cnt >= 1);
    unsigned o = 0;
    uint32_t idx = 0;
    struct mv_heap_node *n = free_block(&o, &idx);
    c->mfn[cnt] = n->first_mfn + idx;
    atomic_store(&c->n, cnt + 1);
    EXPECT_NAMED("frame-on-two-lists");
    atomic_store(&c->n, cnt);
    c->mfn[cnt - 1] = m;
    /* A cached frame whose owner says otherwise. */
    atomic_store(&mv__frame(h, m)->owner, MV_OWNER_ANON);
    EXPECT_NAMED("cached-frame-owned");
    atomic_store(&mv__frame(h, m)->owner, MV_OWNER_CACHED);
    th_assert_audit_clean(h);
}

static void test_report_bounded(void **state)
{
    (void)state;
    /* Far more violations than the report records: all are counted, 64 are listed. */
    struct mv_heap_node *n = h->node[0];
    unsigned o = 0;
    uint32_t idx = 0;
    free_block(&o, &idx);
    for (uint32_t i = 1; i < 200; i++)
        atomic_store(&n->ft[idx + i].count, 1);
    struct mv_audit_report rep = {.size = sizeof(rep)};
    assert_int_equal(mv_host_audit(h, &rep), MV_EUCLEAN);
    assert_true(rep.nr_violations >= 199);
    assert_string_equal(rep.v[MV_AUDIT_MAX_RECORDED - 1].invariant, "I1");
    for (uint32_t i = 1; i < 200; i++)
        atomic_store(&n->ft[idx + i].count, 0);
    th_assert_audit_clean(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_frame_owned),
        cmocka_unit_test(test_free_frame_referenced),
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_block_shape),
        cmocka_unit_test(test_held_frames),
        cmocka_unit_test(test_two_lists),
        cmocka_unit_test(test_report_bounded),
    };
    return cmocka_run_group_tests_name("audit", tests, setup, teardown);
}
