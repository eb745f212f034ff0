/*
 * tests/test_rss.c - the host's real resident memory follows the engine's accounting:
 * 256 MiB of frames allocated and written raise RSS; freed and trimmed, RSS falls back.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define AMOUNT (256 * TH_MiB)

static void check_rss(unsigned order)
{
    struct th_platform *tp;
    mv_host_t *h = th_host_create(2 * AMOUNT, NULL, &tp);
    size_t n = (size_t)(AMOUNT >> (MV_PAGE_SHIFT + order));
    mv_mfn_t *m = calloc(n, sizeof(*m));
    uint64_t base = th_rss_bytes();
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(mv_frame_alloc(h, order, MV_NODE_ANY, 0, &m[i]), 0);
        memset(mv_frame_va(h, m[i]), (int)(i | 1), (size_t)MV_PAGE_SIZE << order);
    }
    uint64_t full = th_rss_bytes();
    assert_true(full >= base + AMOUNT * 9 / 10);
    struct mv_host_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_host_stats(h, &st), 0);
    assert_true(st.committed_frames >= AMOUNT >> MV_PAGE_SHIFT);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(mv_frame_free(h, m[i], order), 0);
    assert_int_equal(mv_host_trim(h), 0);
    uint64_t after = th_rss_bytes();
    /* What the frames made resident has gone again (metadata, and under ASan its shadow,
     * may stay). */
    assert_true(after < full);
    assert_true(full - after >= AMOUNT * 9 / 10);
    assert_int_equal(mv_host_stats(h, &st), 0);
    assert_int_equal(st.committed_frames, 0);
    free(m);
    th_host_destroy(h, tp);
}

static void test_rss_order0(void **state)
{
    (void)state;
    check_rss(0);
}

static void test_rss_order9(void **state)
{
    (void)state;
    check_rss(9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rss_order0),
        cmocka_unit_test(test_rss_order9),
    };
    return cmocka_run_group_tests_name("rss", tests, NULL, NULL);
}
