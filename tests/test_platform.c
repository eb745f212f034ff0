/*
 * tests/test_platform.c - the default posix platform (mm/posix.c) through its public
 * face: config checks, node memory layout and binding counts, metadata from the jemalloc
 * arena and from malloc, decommit (contents and resident memory), slot ids under real
 * threads (run under ThreadSanitizer in CI), the clock, stats and MEMVIRT_TOPOLOGY.
 *
 * Every hook is called through a copy of the platform struct, as a wrapping platform (the
 * test harness, the simulator) calls it.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <numaif.h>

#include <memvirt/memvirt.h>

#define MiB (1ull << 20)
#define TWO_NODES "pack:2 numa:1 core:4 pu:1"

/* A platform and a copy of its struct at another address, as a wrapper holds it. */
struct plat {
    struct mv_platform *orig;
    struct mv_platform p;
};

static void plat_create(struct plat *pl, uint64_t mem_bytes, const char *topology,
                        uint32_t flags)
{
    struct mv_posix_config cfg = {
        .size = sizeof(cfg), .mem_bytes = mem_bytes, .topology = topology, .flags = flags};
    int rc = mv_posix_platform_create(&cfg, &pl->orig);
    if (rc)
        fail_msg("create(%s): %s", topology ? topology : "(null)", mv_strerror_name(rc));
    pl->p = *pl->orig;
}

static struct mv_posix_stats stats_of(const struct plat *pl)
{
    struct mv_posix_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_posix_platform_stats(&pl->p, &st), 0);
    return st;
}

static unsigned char *frame_va(const struct plat *pl, mv_mfn_t mfn)
{
    const struct mv_topology *t = pl->p.topology;
    for (uint32_t i = 0; i < t->nr_nodes; i++)
        if (mfn >= t->node[i].first_mfn && mfn < t->node[i].first_mfn + t->node[i].nr_frames)
            return (unsigned char *)t->node[i].base +
                   (size_t)(mfn - t->node[i].first_mfn) * MV_PAGE_SIZE;
    fail_msg("mfn %#llx outside every node", (unsigned long long)mfn);
    return NULL;
}

static bool frame_is(const struct plat *pl, mv_mfn_t mfn, unsigned char v)
{
    const unsigned char *b = frame_va(pl, mfn);
    for (size_t i = 0; i < MV_PAGE_SIZE; i++)
        if (b[i] != v)
            return false;
    return true;
}

/* ---- Config checks ------------------------------------------------------------------- */

static void expect_create_fails(const void *cfg, int want)
{
    struct mv_platform *const sentinel = (struct mv_platform *)(uintptr_t)0x5a5a5a5a;
    struct mv_platform *out = sentinel;
    int rc = mv_posix_platform_create(cfg, &out);
    if (rc != want)
        fail_msg("got %s, want %s", mv_strerror_name(rc), mv_strerror_name(want));
    assert_ptr_equal(out, sentinel);
}

static void test_bad_configs(void **state)
{
    (void)state;
    struct mv_posix_config cfg = {.size = sizeof(cfg), .mem_bytes = 16 * MiB,
                                  .topology = TWO_NODES};
    struct {
        struct mv_posix_config cfg;
        uint64_t newer_field;
    } big = {.cfg = cfg, .newer_field = 1};
    struct mv_platform *p = NULL;

    expect_create_fails(NULL, MV_EINVAL);
    assert_int_equal(mv_posix_platform_create(&cfg, NULL), MV_EINVAL);

    cfg.size = offsetof(struct mv_posix_config, flags);
    expect_create_fails(&cfg, MV_EINVAL);
    cfg.size = 0;
    expect_create_fails(&cfg, MV_EINVAL);
    cfg.size = sizeof(cfg);

    big.cfg.size = sizeof(big);
    expect_create_fails(&big, MV_E2BIG);
    big.newer_field = 0; /* a newer caller that leaves the new field zero is fine */
    assert_int_equal(mv_posix_platform_create(&big.cfg, &p), 0);
    mv_posix_platform_destroy(p);
    /* The first published size (through flags) is accepted. */
    cfg.size = offsetof(struct mv_posix_config, flags) + sizeof(uint32_t);
    assert_int_equal(mv_posix_platform_create(&cfg, &p), 0);
    mv_posix_platform_destroy(p);
    cfg.size = sizeof(cfg);

    cfg.mem_bytes = 0;
    expect_create_fails(&cfg, MV_EINVAL);
    cfg.mem_bytes = 2 * MiB - MV_PAGE_SIZE;
    expect_create_fails(&cfg, MV_EINVAL);
    cfg.mem_bytes = 2 * MiB; /* one granule cannot feed two nodes */
    expect_create_fails(&cfg, MV_EINVAL);
    cfg.mem_bytes = 16 * MiB;

    cfg.flags = 0x4;
    expect_create_fails(&cfg, MV_EINVAL);
    cfg.flags = 0x80000000u | MV_POSIX_NO_BIND;
    expect_create_fails(&cfg, MV_EINVAL);
    cfg.flags = 0;

    cfg.topology = "pack:two";
    expect_create_fails(&cfg, MV_EINVAL);
    cfg.topology = TWO_NODES "; distances=10,20";
    expect_create_fails(&cfg, MV_EINVAL);
    cfg.topology = "xml:/nonexistent/topology.xml";
    expect_create_fails(&cfg, MV_EINVAL);

    mv_posix_platform_destroy(NULL); /* safe */
}

/* ---- Layout ---------------------------------------------------------------------------- */

static void test_two_node_layout(void **state)
{
    (void)state;
    struct plat pl;
    plat_create(&pl, 64 * MiB, TWO_NODES, 0);
    const struct mv_platform *p = &pl.p;
    const struct mv_topology *t = p->topology;

    assert_int_equal(p->size, sizeof(struct mv_platform));
    assert_non_null(p->meta_alloc);
    assert_non_null(p->meta_free);
    assert_non_null(p->mem_decommit);
    assert_non_null(p->clock_ns);
    assert_non_null(p->slot_id);
    assert_null(p->mem_commit); /* first write commits */
    assert_int_equal(p->max_slots, MV_MAX_SLOTS);

    assert_int_equal(t->nr_nodes, 2);
    assert_int_equal(t->nr_cpus, 8);
    for (uint32_t i = 0; i < 2; i++) {
        const struct mv_node_desc *nd = &t->node[i];
        assert_int_equal(nd->first_mfn, i * 8192);
        assert_int_equal(nd->nr_frames, 8192);
        assert_int_equal(nd->nr_cpus, 4);
        assert_int_equal(nd->os_index, UINT32_MAX);
        assert_non_null(nd->base);
        assert_int_equal((uintptr_t)nd->base % MV_PAGE_SIZE, 0);
        assert_int_equal(t->distance[i][1 - i], 20);
        /* Reads as zero, writable at both ends. */
        unsigned char *b = nd->base;
        size_t last = (size_t)nd->nr_frames * MV_PAGE_SIZE - 1;
        assert_int_equal(b[0], 0);
        assert_int_equal(b[last], 0);
        b[0] = 0x11;
        b[last] = 0x22;
        assert_int_equal(b[0], 0x11);
        assert_int_equal(b[last], 0x22);
    }
    uintptr_t b0 = (uintptr_t)t->node[0].base, b1 = (uintptr_t)t->node[1].base;
    assert_true(b0 + 64 * MiB / 2 <= b1 || b1 + 64 * MiB / 2 <= b0); /* disjoint */

    struct mv_posix_stats st = stats_of(&pl);
    assert_int_equal(st.reserved_bytes, 64 * MiB);
    assert_int_equal(st.bind_ok, 0); /* synthetic nodes are never bound... */
    assert_int_equal(st.bind_refused, 0); /* ...nor counted as refused */
    assert_int_equal(st.decommit_calls, 0);
    mv_posix_platform_destroy(pl.orig);
}

/* The machine's own topology: every real node is bound or counted as refused. */
static void test_real_machine_binding(void **state)
{
    (void)state;
    struct plat pl;
    plat_create(&pl, 16 * MiB, "real", 0);
    const struct mv_topology *t = pl.p.topology;
    struct mv_posix_stats st = stats_of(&pl);
    assert_int_equal(st.bind_ok + st.bind_refused, t->nr_nodes);

    /* Where binding held and the kernel answers, the page sits on its node. */
    void *page = t->node[0].base;
    memset(page, 1, MV_PAGE_SIZE);
    int status = -1;
    if (st.bind_ok == t->nr_nodes && move_pages(0, 1, &page, NULL, &status, 0) == 0)
        assert_int_equal(status, (int)t->node[0].os_index);
    mv_posix_platform_destroy(pl.orig);

    plat_create(&pl, 16 * MiB, "real", MV_POSIX_NO_BIND);
    st = stats_of(&pl);
    assert_int_equal(st.bind_ok, 0);
    assert_int_equal(st.bind_refused, 0);
    mv_posix_platform_destroy(pl.orig);
}

/* ---- Metadata ----------------------------------------------------------------------------- */

static void check_meta(uint32_t flags)
{
    static const size_t sizes[] = {1, 7, 64, 100, 4095, 4096, 5000, 100000, 3 * MiB};
    static const size_t aligns[] = {1, 8, 16, 64, 256, 4096};
    enum { N = sizeof(sizes) / sizeof(sizes[0]) * (sizeof(aligns) / sizeof(aligns[0])) };
    void *ptr[N];
    size_t len[N];
    struct plat pl;
    unsigned n = 0;
    uint64_t total = 0;

    plat_create(&pl, 4 * MiB, "pu:1", flags);
    const struct mv_platform *p = &pl.p;
    uint64_t start = stats_of(&pl).meta_bytes;
    if (flags & MV_POSIX_PLAIN_MALLOC)
        assert_int_equal(stats_of(&pl).jemalloc_arena, UINT32_MAX);

    /* Twice: the second round gets memory the first one dirtied, and must see zeros. */
    for (int round = 0; round < 2; round++) {
        n = 0;
        total = 0;
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
            for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++) {
                unsigned char *b = p->meta_alloc(p, sizes[s], aligns[a]);
                assert_non_null(b);
                assert_int_equal((uintptr_t)b % aligns[a], 0);
                for (size_t i = 0; i < sizes[s]; i++)
                    if (b[i])
                        fail_msg("size %zu align %zu: byte %zu not zero", sizes[s], aligns[a], i);
                memset(b, 0xff, sizes[s]);
                ptr[n] = b;
                len[n++] = sizes[s];
                total += sizes[s];
            }
        assert_int_equal(stats_of(&pl).meta_bytes, start + total);
        for (unsigned i = 0; i < n; i++)
            p->meta_free(p, ptr[i], len[i]);
        assert_int_equal(stats_of(&pl).meta_bytes, start);
    }

    /* Refused: not a power of two, above a page, nothing at all. */
    assert_null(p->meta_alloc(p, 64, 3));
    assert_null(p->meta_alloc(p, 64, 8192));
    assert_null(p->meta_alloc(p, 0, 8));
    p->meta_free(p, NULL, 0);
    assert_int_equal(stats_of(&pl).meta_bytes, start);

    /* A block left behind (an engine bug) goes away with the arena on destroy. */
    if (stats_of(&pl).jemalloc_arena != UINT32_MAX)
        assert_non_null(p->meta_alloc(p, 128, 64));
    mv_posix_platform_destroy(pl.orig);
}

static void test_meta_default(void **state)
{
    (void)state;
    check_meta(0);
}

static void test_meta_plain_malloc(void **state)
{
    (void)state;
    check_meta(MV_POSIX_PLAIN_MALLOC);
}

/* Each platform has its own arena (or none, without jemalloc). */
static void test_meta_arenas(void **state)
{
    (void)state;
    struct plat a, b;
    plat_create(&a, 4 * MiB, "pu:1", 0);
    plat_create(&b, 4 * MiB, "pu:1", 0);
    uint32_t ia = stats_of(&a).jemalloc_arena, ib = stats_of(&b).jemalloc_arena;
    assert_true(ia == ib ? ia == UINT32_MAX : true);
    mv_posix_platform_destroy(b.orig);
    mv_posix_platform_destroy(a.orig);
}

/* ---- Decommit -------------------------------------------------------------------------- */

static void test_decommit_zeroes(void **state)
{
    (void)state;
    struct plat pl;
    plat_create(&pl, 64 * MiB, TWO_NODES, 0);
    const struct mv_platform *p = &pl.p;

    for (mv_mfn_t f = 10; f <= 20; f++)
        memset(frame_va(&pl, f), 0xc3, MV_PAGE_SIZE);
    for (mv_mfn_t f = 8190; f < 8194; f++) /* across the node boundary */
        memset(frame_va(&pl, f), 0x3c, MV_PAGE_SIZE);

    assert_int_equal(p->mem_decommit(p, 10, 10), 0);
    for (mv_mfn_t f = 10; f < 20; f++)
        assert_true(frame_is(&pl, f, 0));
    assert_true(frame_is(&pl, 20, 0xc3)); /* just past the range: kept */
    struct mv_posix_stats st = stats_of(&pl);
    assert_int_equal(st.decommit_calls, 1);
    assert_int_equal(st.decommit_frames, 10);

    assert_int_equal(p->mem_decommit(p, 8191, 2), 0); /* one call per node crossed */
    assert_true(frame_is(&pl, 8190, 0x3c));
    assert_true(frame_is(&pl, 8191, 0));
    assert_true(frame_is(&pl, 8192, 0));
    assert_true(frame_is(&pl, 8193, 0x3c));
    st = stats_of(&pl);
    assert_int_equal(st.decommit_calls, 3);
    assert_int_equal(st.decommit_frames, 12);

    /* A decommitted frame is writable again, and the whole machine can go at once. */
    memset(frame_va(&pl, 15), 0x77, MV_PAGE_SIZE);
    assert_int_equal(p->mem_decommit(p, 0, 16384), 0);
    assert_true(frame_is(&pl, 15, 0));
    assert_true(frame_is(&pl, 20, 0));
    assert_true(frame_is(&pl, 8193, 0));
    assert_int_equal(p->mem_decommit(p, 5, 0), 0); /* nothing to do */
    mv_posix_platform_destroy(pl.orig);
}

static void test_decommit_out_of_range(void **state)
{
    (void)state;
    struct plat pl;
    plat_create(&pl, 64 * MiB, TWO_NODES, 0);
    const struct mv_platform *p = &pl.p;

    memset(frame_va(&pl, 16383), 0x5e, MV_PAGE_SIZE);
    struct mv_posix_stats before = stats_of(&pl);
    assert_int_equal(p->mem_decommit(p, 16384, 1), MV_ERANGE);
    assert_int_equal(p->mem_decommit(p, 16383, 2), MV_ERANGE); /* refused as a whole */
    assert_int_equal(p->mem_decommit(p, 0, 16385), MV_ERANGE);
    assert_int_equal(p->mem_decommit(p, UINT64_MAX, 2), MV_ERANGE); /* wraps */
    assert_int_equal(p->mem_decommit(p, 1ull << 40, 1), MV_ERANGE);
    assert_true(frame_is(&pl, 16383, 0x5e));
    struct mv_posix_stats after = stats_of(&pl);
    assert_int_equal(after.decommit_calls, before.decommit_calls);
    assert_int_equal(after.decommit_frames, before.decommit_frames);
    mv_posix_platform_destroy(pl.orig);
}

/* Resident pages of [base, base + len), from mincore. */
static uint64_t resident_pages(void *base, size_t len)
{
    size_t pages = len / (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *vec = malloc(pages);
    uint64_t n = 0;
    assert_non_null(vec);
    assert_int_equal(mincore(base, len, vec), 0);
    for (size_t i = 0; i < pages; i++)
        n += vec[i] & 1;
    free(vec);
    return n;
}

static uint64_t rss_bytes(void)
{
    unsigned long long size = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%llu %llu", &size, &rss), 2);
    fclose(f);
    return rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void test_resident_memory(void **state)
{
    (void)state;
    struct plat pl;
    plat_create(&pl, 64 * MiB, "pu:1", 0);
    const struct mv_platform *p = &pl.p;
    void *base = p->topology->node[0].base;
    size_t len = 64 * MiB;

    assert_int_equal(resident_pages(base, len), 0); /* reserved, not committed */
    uint64_t rss0 = rss_bytes();
    for (size_t off = 0; off < len; off += MV_PAGE_SIZE)
        ((volatile unsigned char *)base)[off] = 1;
    assert_int_equal(resident_pages(base, len), len / MV_PAGE_SIZE);
    uint64_t rss1 = rss_bytes();
    assert_true(rss1 >= rss0 + 48 * MiB);

    assert_int_equal(p->mem_decommit(p, 0, len / MV_PAGE_SIZE), 0);
    assert_int_equal(resident_pages(base, len), 0);
    assert_true(rss_bytes() + 48 * MiB <= rss1);
    mv_posix_platform_destroy(pl.orig);
}

/* ---- Slots ----------------------------------------------------------------------------- */

static struct plat slot_plat;
static pthread_barrier_t slot_barrier;

struct slot_worker {
    pthread_t tid;
    uint32_t slot;
    uint32_t again;
};

static void *slot_main(void *arg)
{
    struct slot_worker *w = arg;
    const struct mv_platform *p = &slot_plat.p;
    w->slot = p->slot_id(p);
    pthread_barrier_wait(&slot_barrier); /* every worker holds its slot at once */
    w->again = p->slot_id(p);
    pthread_barrier_wait(&slot_barrier);
    return NULL;
}

/* Run n workers that all hold a slot at the same time; small stacks, many threads. */
static void run_slot_workers(struct slot_worker *w, unsigned n)
{
    pthread_attr_t attr;
    assert_int_equal(pthread_attr_init(&attr), 0);
    assert_int_equal(pthread_attr_setstacksize(&attr, 256 * 1024), 0);
    assert_int_equal(pthread_barrier_init(&slot_barrier, NULL, n), 0);
    for (unsigned i = 0; i < n; i++)
        assert_int_equal(pthread_create(&w[i].tid, &attr, slot_main, &w[i]), 0);
    for (unsigned i = 0; i < n; i++)
        assert_int_equal(pthread_join(w[i].tid, NULL), 0);
    pthread_barrier_destroy(&slot_barrier);
    pthread_attr_destroy(&attr);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void test_slots_main_thread(void **state)
{
    (void)state;
    struct plat a, b;
    plat_create(&a, 4 * MiB, "pu:1", 0);
    plat_create(&b, 4 * MiB, "pu:1", 0);
    uint32_t s = a.p.slot_id(&a.p);
    assert_true(s < MV_MAX_SLOTS);
    assert_int_equal(a.p.slot_id(&a.p), s); /* stable */
    assert_int_equal(b.p.slot_id(&b.p), s); /* process-wide: the same in every platform */
    assert_true(stats_of(&a).slots_in_use >= 1);
    mv_posix_platform_destroy(b.orig);
    mv_posix_platform_destroy(a.orig);
}

static void test_slots_threads(void **state)
{
    (void)state;
    enum { N = 8 };
    struct slot_worker w[N];
    uint32_t first[N], second[N];

    plat_create(&slot_plat, 4 * MiB, "pu:1", 0);
    uint32_t mine = slot_plat.p.slot_id(&slot_plat.p);
    uint32_t base = stats_of(&slot_plat).slots_in_use;

    memset(w, 0, sizeof(w));
    run_slot_workers(w, N);
    for (unsigned i = 0; i < N; i++) {
        assert_true(w[i].slot < MV_MAX_SLOTS);
        assert_int_equal(w[i].again, w[i].slot);
        assert_int_not_equal(w[i].slot, mine);
        first[i] = w[i].slot;
    }
    qsort(first, N, sizeof(first[0]), cmp_u32);
    for (unsigned i = 1; i < N; i++)
        assert_int_not_equal(first[i], first[i - 1]); /* distinct while running together */
    assert_int_equal(stats_of(&slot_plat).slots_in_use, base); /* given back at exit */

    /* The lowest free slots are taken first, so the next batch reuses the same ids. */
    memset(w, 0, sizeof(w));
    run_slot_workers(w, N);
    for (unsigned i = 0; i < N; i++)
        second[i] = w[i].slot;
    qsort(second, N, sizeof(second[0]), cmp_u32);
    assert_memory_equal(first, second, sizeof(first));
    assert_int_equal(stats_of(&slot_plat).slots_in_use, base);
    mv_posix_platform_destroy(slot_plat.orig);
}

static void test_slots_exhausted(void **state)
{
    (void)state;
    enum { N = MV_MAX_SLOTS + 8 };
    struct slot_worker *w = calloc(N, sizeof(*w));
    assert_non_null(w);

    plat_create(&slot_plat, 4 * MiB, "pu:1", 0);
    (void)slot_plat.p.slot_id(&slot_plat.p);
    uint32_t base = stats_of(&slot_plat).slots_in_use;
    run_slot_workers(w, N);

    unsigned none = 0;
    static bool seen[MV_MAX_SLOTS];
    memset(seen, 0, sizeof(seen));
    for (unsigned i = 0; i < N; i++) {
        assert_int_equal(w[i].again, w[i].slot);
        if (w[i].slot == MV_SLOT_NONE) {
            none++;
            continue;
        }
        assert_true(w[i].slot < MV_MAX_SLOTS);
        assert_false(seen[w[i].slot]);
        seen[w[i].slot] = true;
    }
    assert_int_equal(none, N - (MV_MAX_SLOTS - base));
    assert_int_equal(stats_of(&slot_plat).slots_in_use, base);
    mv_posix_platform_destroy(slot_plat.orig);
    free(w);
}

/*
 * Slots change hands between threads that never synchronise otherwise: spawners each
 * start and join a series of short-lived children, and a child bumps a plain per-slot
 * counter, as the engine keeps plain per-slot caches. Giving a slot back is a release and
 * taking it an acquire, so ThreadSanitizer sees no race and no increment is lost.
 */
enum { SPAWNERS = 4, CHILDREN = 40 };
static uint64_t per_slot[MV_MAX_SLOTS];

static void *handoff_child(void *arg)
{
    (void)arg;
    const struct mv_platform *p = &slot_plat.p;
    uint32_t s = p->slot_id(p);
    if (s < MV_MAX_SLOTS)
        per_slot[s]++;
    return NULL;
}

static void *handoff_spawner(void *arg)
{
    (void)arg;
    for (int i = 0; i < CHILDREN; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, handoff_child, NULL) != 0)
            return (void *)1;
        pthread_join(t, NULL);
    }
    return NULL;
}

static void test_slots_handoff(void **state)
{
    (void)state;
    pthread_t sp[SPAWNERS];
    uint64_t sum = 0;

    memset(per_slot, 0, sizeof(per_slot));
    plat_create(&slot_plat, 4 * MiB, "pu:1", 0);
    for (int i = 0; i < SPAWNERS; i++)
        assert_int_equal(pthread_create(&sp[i], NULL, handoff_spawner, NULL), 0);
    for (int i = 0; i < SPAWNERS; i++) {
        void *ret;
        assert_int_equal(pthread_join(sp[i], &ret), 0);
        assert_null(ret);
    }
    for (uint32_t s = 0; s < MV_MAX_SLOTS; s++)
        sum += per_slot[s];
    assert_int_equal(sum, SPAWNERS * CHILDREN); /* few threads: every child got a slot */
    mv_posix_platform_destroy(slot_plat.orig);
}

/* ---- Clock, stats, environment ----------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void test_clock(void **state)
{
    (void)state;
    struct plat pl;
    plat_create(&pl, 4 * MiB, "pu:1", 0);
    const struct mv_platform *p = &pl.p;
    uint64_t before = now_ns();
    uint64_t a = p->clock_ns(p);
    uint64_t b = p->clock_ns(p);
    uint64_t after = now_ns();
    assert_true(before <= a && a <= b && b <= after);
    for (int i = 0; i < 1000; i++) {
        uint64_t c = p->clock_ns(p);
        assert_true(c >= b);
        b = c;
    }
    mv_posix_platform_destroy(pl.orig);
}

static void test_stats_sizes(void **state)
{
    (void)state;
    struct plat pl;
    plat_create(&pl, 4 * MiB, "pu:1", 0);
    struct mv_posix_stats st = {.size = sizeof(st) - 1};
    assert_int_equal(mv_posix_platform_stats(&pl.p, &st), MV_EINVAL);
    assert_int_equal(mv_posix_platform_stats(&pl.p, NULL), MV_EINVAL);
    st.size = sizeof(st);
    assert_int_equal(mv_posix_platform_stats(NULL, &st), MV_EINVAL);

    /* A newer caller's longer struct: what we do not know reads as zero. */
    struct {
        struct mv_posix_stats st;
        uint64_t newer[2];
    } big;
    memset(&big, 0xee, sizeof(big));
    big.st.size = sizeof(big);
    assert_int_equal(mv_posix_platform_stats(&pl.p, &big.st), 0);
    assert_int_equal(big.st.size, sizeof(big));
    assert_int_equal(big.st.reserved_bytes, 4 * MiB);
    assert_int_equal(big.newer[0], 0);
    assert_int_equal(big.newer[1], 0);
    mv_posix_platform_destroy(pl.orig);
}

static void test_environment_topology(void **state)
{
    (void)state;
    struct plat pl;

    assert_int_equal(setenv("MEMVIRT_TOPOLOGY", "pack:3 numa:1 core:2 pu:1", 1), 0);
    plat_create(&pl, 12 * MiB, NULL, 0);
    assert_int_equal(pl.p.topology->nr_nodes, 3);
    assert_int_equal(pl.p.topology->node[2].nr_cpus, 2);
    mv_posix_platform_destroy(pl.orig);

    plat_create(&pl, 12 * MiB, "numa:2 pu:1", 0); /* the config wins over the variable */
    assert_int_equal(pl.p.topology->nr_nodes, 2);
    mv_posix_platform_destroy(pl.orig);

    assert_int_equal(setenv("MEMVIRT_TOPOLOGY", "not a topology", 1), 0);
    struct mv_posix_config cfg = {.size = sizeof(cfg), .mem_bytes = 12 * MiB};
    expect_create_fails(&cfg, MV_EINVAL);
    assert_int_equal(unsetenv("MEMVIRT_TOPOLOGY"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_two_node_layout),
        cmocka_unit_test(test_real_machine_binding),
        cmocka_unit_test(test_meta_default),
        cmocka_unit_test(test_meta_plain_malloc),
        cmocka_unit_test(test_meta_arenas),
        cmocka_unit_test(test_decommit_zeroes),
        cmocka_unit_test(test_decommit_out_of_range),
        cmocka_unit_test(test_resident_memory),
        cmocka_unit_test(test_slots_main_thread),
        cmocka_unit_test(test_slots_threads),
        cmocka_unit_test(test_slots_exhausted),
        cmocka_unit_test(test_slots_handoff),
        cmocka_unit_test(test_clock),
        cmocka_unit_test(test_stats_sizes),
        cmocka_unit_test(test_environment_topology),
    };
    /* The suite picks its own topologies; the caller's environment must not. */
    unsetenv("MEMVIRT_TOPOLOGY");
    return cmocka_run_group_tests(tests, NULL, NULL);
}
