/*
 * tests/test_heap_threads.c - the heaps under real threads (run under ThreadSanitizer in
 * CI): concurrent allocation and free of every order across two nodes, each frame tagged
 * with its holder so that a frame handed out twice is caught, then an exact audit.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define THREADS 4
#define STEPS 20000
#define HELD 64

static mv_host_t *host;

struct worker {
    unsigned id;
    uint64_t seed;
    uint64_t allocs, failures;
    int error;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct th_rng rng = {.s = w->seed};
    struct {
        mv_mfn_t mfn;
        unsigned order;
        bool live;
    } held[HELD] = {{0}};
    for (int step = 0; step < STEPS && !w->error; step++) {
        unsigned i = (unsigned)th_rand_below(&rng, HELD);
        if (held[i].live) {
            /* The tag written at allocation must still be there: nobody else had it. */
            uint64_t *p = mv_frame_va(host, held[i].mfn);
            uint64_t *last = mv_frame_va(host, held[i].mfn + (1ull << held[i].order) - 1);
            if (p[0] != (w->id + 1) * 0x1000000ull + i || last[1] != p[0])
                w->error = 1;
            if (mv_frame_free(host, held[i].mfn, held[i].order))
                w->error = 2;
            held[i].live = false;
            continue;
        }
        unsigned order = th_rand_below(&rng, 4) ? 0 : (unsigned)th_rand_below(&rng, 10);
        uint32_t node = th_rand_below(&rng, 2) ? MV_NODE_ANY : (uint32_t)th_rand_below(&rng, 2);
        mv_mfn_t m;
        int rc = mv_frame_alloc(host, order, node, 0, &m);
        if (rc == MV_ENOMEM) {
            w->failures++;
            continue;
        }
        if (rc) {
            w->error = 3;
            break;
        }
        w->allocs++;
        uint64_t *p = mv_frame_va(host, m);
        uint64_t *last = mv_frame_va(host, m + (1ull << order) - 1);
        p[0] = (w->id + 1) * 0x1000000ull + i;
        last[1] = p[0];
        held[i].mfn = m;
        held[i].order = order;
        held[i].live = true;
    }
    for (unsigned i = 0; i < HELD; i++)
        if (held[i].live && mv_frame_free(host, held[i].mfn, held[i].order))
            w->error = 4;
    mv_host_trim(host);
    return NULL;
}

static void test_concurrent_alloc_free(void **state)
{
    (void)state;
    struct th_platform *tp;
    struct mv_host_config cfg = {.mem_bytes = 128 * TH_MiB, .slot_cache_frames = 16,
                                 .decommit_batch = 128};
    host = th_host_create_cfg(&cfg, "pack:2 numa:1 core:2 pu:1", &tp);
    pthread_t t[THREADS];
    struct worker w[THREADS];
    for (unsigned i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.id = i, .seed = 0xabcdef00ull + i};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    uint64_t allocs = 0;
    for (unsigned i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].error, 0);
        allocs += w[i].allocs;
    }
    assert_true(allocs > THREADS * STEPS / 4);
    th_assert_audit_clean(host);
    assert_int_equal(mv_host_drain(host), 0);
    struct mv_host_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_host_stats(host, &st), 0);
    assert_int_equal(st.free_frames, st.total_frames);
    assert_int_equal(st.committed_frames, 0);
    th_host_destroy(host, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_alloc_free),
    };
    return cmocka_run_group_tests_name("heap_threads", tests, NULL, NULL);
}
