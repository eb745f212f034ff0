/*
 * perf/bench_p2m.c - the P2M over a 24 GiB guest (6.29 M gfns), with same-run baselines.
 *
 *   p2m/lookup_random_4k        independent random lookups, guest mapped with 4 KiB leaves
 *   p2m/lookup_random_4k_batched the same through mv_p2m_lookup_many (64 per call)
 *   p2m/lookup_random_2m        the same over 2 MiB leaves
 *   baseline/flat_lookup_random a flat gfn -> mfn array of the same mapping
 *   p2m/lookup_chase_4k         each gfn derived from the previous result (latency-bound,
 *                               as in a fault handler); baseline/flat_lookup_chase likewise
 *   p2m/set_entry_4k            rewrite one 4 KiB entry (type toggled ro/rw); item = one call
 *   p2m/populate_1g             populate 1 GiB (2 MiB extents); item = 1 GiB
 *   p2m/decrease_1g             decrease 1 GiB of touched memory, decommit included; item = 1 GiB
 *   baseline/madvise_1g         madvise(MADV_DONTNEED) over 1 GiB of touched memory
 *   p2m/logdirty_peek_clean_24g_sparse / _dense
 *                               one full harvest-and-re-protect pass with 0.1% / 50% of the
 *                               pages dirtied before it (the dirtying is not timed); item = pass
 *   p2m/logdirty_enable_24g     turning log-dirty on (re-typing every entry); item = enable
 *   p2m/write_fault_logdirty    one log-dirty write fault fixed; item = fault
 *
 * Populating does not touch guest frames, so the 24 GiB guests cost only their p2m tables
 * and frame descriptors here. The guests are built once (on first use) and kept for the
 * whole program; MEMVIRT_BENCH_GUEST_GIB makes them smaller (the smoke test uses 1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <memvirt/memvirt.h>

#include "bench.h"
#include "fixture.h"

#define GIB (1ull << 30)
#define GFNS_PER_GIB (GIB >> MV_PAGE_SHIFT)

struct fixture {
    mv_host_t *host;
    mv_domain_t *d4k, *d2m, *dio;
    uint64_t gfns;        /* per guest */
    mv_mfn_t *flat;       /* gfn -> mfn of d4k, the baseline's array */
    int failed;
};

static struct fixture fx;

static int populate_all(mv_domain_t *d, uint64_t gfns, unsigned order)
{
    enum { CHUNK = 4096 };
    static mv_gfn_t list[CHUNK];
    uint64_t extents = gfns >> order;
    for (uint64_t e = 0; e < extents;) {
        uint64_t n = extents - e < CHUNK ? extents - e : CHUNK;
        for (uint64_t i = 0; i < n; i++)
            list[i] = (e + i) << order;
        uint64_t off = 0, done;
        int rc;
        while ((rc = mv_populate_physmap(d, list + off, n - off, order, MV_NODE_ANY, &done)) ==
               MV_EAGAIN)
            off += done;
        if (rc)
            return rc;
        e += n;
    }
    return 0;
}

static void fixture_fini(void)
{
    if (!fx.host)
        return;
    mv_domain_t *doms[] = {fx.d4k, fx.d2m, fx.dio};
    mvb_fixture_teardown("p2m", fx.host, doms, 3);
    free(fx.flat);
    fx.host = NULL;
}

static int fixture_get(void)
{
    if (fx.host || fx.failed)
        return fx.failed;
    const char *env = getenv("MEMVIRT_BENCH_GUEST_GIB");
    uint64_t gib = env ? strtoull(env, NULL, 10) : 24;
    if (!gib || gib > 64)
        gib = 24;
    fx.gfns = gib * GFNS_PER_GIB;
    struct mv_host_config hc = {.size = sizeof hc, .mem_bytes = (2 * gib + 3) * GIB,
                                .topology = "pack:1 numa:1 core:2 pu:1"};
    int rc = mv_host_create(&hc, &fx.host);
    struct mv_domain_config dc = {.size = sizeof dc, .type = MV_DOMAIN_HVM,
                                  .paging = MV_PAGING_HAP, .nr_vcpus = 1,
                                  .max_pages = fx.gfns, .node_affinity = MV_NODE_ANY};
    mv_domain_t **slots[] = {&fx.d4k, &fx.d2m, &fx.dio};
    for (uint32_t i = 0; !rc && i < 3; i++) {
        dc.domid = i + 1;
        if (i == 2)
            dc.max_pages = 2 * GFNS_PER_GIB;
        rc = mv_domain_create(fx.host, &dc, slots[i]);
    }
    if (!rc)
        rc = populate_all(fx.d4k, fx.gfns, 0);
    if (!rc)
        rc = populate_all(fx.d2m, fx.gfns, 9);
    if (!rc) {
        fx.flat = malloc(fx.gfns * sizeof(*fx.flat));
        for (uint64_t g = 0; fx.flat && g < fx.gfns; g++) {
            struct mv_p2m_entry e;
            mv_p2m_lookup(fx.d4k, g, &e);
            fx.flat[g] = e.mfn;
        }
        if (!fx.flat)
            rc = MV_ENOMEM;
    }
    if (rc) {
        fprintf(stderr, "memvirt-bench: p2m fixture: %s\n", mv_strerror_name(rc));
        fx.failed = 1;
        return 1;
    }
    atexit(fixture_fini);
    return 0;
}

static int fx_setup(void *user, int threads)
{
    (void)user;
    (void)threads;
    return fixture_get();
}


/*
 * The next gfn of a chase: from the frame the last lookup found (so each lookup waits for
 * the one before), mixed with the step number so that the walk never settles into a short
 * cycle that would stay in the cache.
 */
static inline mv_gfn_t chase_next(mv_mfn_t mfn, uint64_t step, uint64_t gfns)
{
    return (((mfn ^ step) * 0x9e3779b97f4a7c15ull) >> 17) % gfns;
}

/* ---- Lookups ----------------------------------------------------------------------------- */

struct lookup_bench {
    bool use_2m, chase, flat;
};

static void run_lookup(mvb_state_t *st, void *user)
{
    const struct lookup_bench *b = user;
    mv_domain_t *d = b->use_2m ? fx.d2m : fx.d4k;
    const uint64_t gfns = fx.gfns;
    const mv_mfn_t *flat = fx.flat;
    uint64_t seed = 0x2545f4914f6cdd1dull, n, sum = 0, step = 0;
    mv_gfn_t g = 1;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++) {
            g = b->chase ? g : mvb_xorshift(&seed) % gfns;
            mv_mfn_t m;
            if (b->flat) {
                m = flat[g];
            } else {
                struct mv_p2m_entry e;
                if (mv_p2m_lookup(d, g, &e) || e.type != MV_P2M_RAM_RW) {
                    mvb_skip_with_error(st, "lookup failed");
                    break;
                }
                m = e.mfn;
            }
            sum += m;
            if (b->chase)
                g = chase_next(m, ++step, gfns);
        }
    }
    if (sum == 1)
        fprintf(stderr, "(unlikely)\n"); /* keeps the lookups from being optimized out */
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st));
}

/* Independent random lookups through mv_p2m_lookup_many, 64 at a time; item = one lookup. */
static void run_lookup_many(mvb_state_t *st, void *user)
{
    (void)user;
    enum { BATCH = 64 };
    mv_gfn_t gfns[BATCH];
    struct mv_p2m_entry out[BATCH];
    uint64_t seed = 0x2545f4914f6cdd1dull, n, sum = 0, done = 0;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i += BATCH) {
            size_t m = n - i < BATCH ? (size_t)(n - i) : BATCH;
            for (size_t k = 0; k < m; k++)
                gfns[k] = mvb_xorshift(&seed) % fx.gfns;
            if (mv_p2m_lookup_many(fx.d4k, gfns, m, out)) {
                mvb_skip_with_error(st, "lookup failed");
                break;
            }
            for (size_t k = 0; k < m; k++)
                sum += out[k].mfn;
            done += m;
        }
    }
    if (sum == 1)
        fprintf(stderr, "(unlikely)\n");
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, done);
}

static struct lookup_bench lk_4k = {0}, lk_2m = {.use_2m = true}, lk_flat = {.flat = true},
                           ch_4k = {.chase = true}, ch_flat = {.chase = true, .flat = true};

/* ---- set_entry --------------------------------------------------------------------------- */

static void run_set_entry(mvb_state_t *st, void *user)
{
    (void)user;
    uint64_t seed = 0x9e3779b97f4a7c15ull, n, k = 0;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++, k++) {
            mv_gfn_t g = mvb_xorshift(&seed) % fx.gfns;
            unsigned type = (k & 1) ? MV_P2M_RAM_RW : MV_P2M_RAM_RO;
            int rc = mv_p2m_set_entry(fx.d4k, g, fx.flat[g], 0, type, MV_P2M_RWX);
            if (rc) {
                mvb_skip_with_error(st, mv_strerror_name(rc));
                break;
            }
        }
    }
    /* Leave every entry ram_rw again for the lookups. */
    uint64_t off = 0, done;
    while (mv_p2m_change_type_range(fx.d4k, off, fx.gfns - off, MV_P2M_RAM_RO, MV_P2M_RAM_RW,
                                    &done) == MV_EAGAIN)
        off += done;
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st));
}

/* ---- 1 GiB populate / decrease / madvise ------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int io_populate(void)
{
    return populate_all(fx.dio, GFNS_PER_GIB, 9);
}

static int io_decrease(void)
{
    static mv_gfn_t list[GFNS_PER_GIB >> 9];
    for (uint64_t i = 0; i < (GFNS_PER_GIB >> 9); i++)
        list[i] = i << 9;
    uint64_t off = 0, done;
    int rc;
    while ((rc = mv_decrease_reservation(fx.dio, list + off, (GFNS_PER_GIB >> 9) - off, 9,
                                         &done)) == MV_EAGAIN)
        off += done;
    return rc ? rc : mv_host_trim(fx.host);
}

static void touch_guest(void)
{
    for (mv_gfn_t g = 0; g < GFNS_PER_GIB; g += 512) {
        struct mv_p2m_entry e;
        mv_p2m_lookup(fx.dio, g, &e);
        volatile uint8_t *p = mv_frame_va(fx.host, e.mfn);
        for (unsigned i = 0; i < 512; i++)
            p[(size_t)i << MV_PAGE_SHIFT] = 1;
    }
}

struct io_bench {
    int which; /* 0 populate, 1 decrease */
};

static void run_io(mvb_state_t *st, void *user)
{
    const struct io_bench *b = user;
    uint64_t n;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++) {
            int rc;
            double t0, t1;
            if (b->which == 0) {
                t0 = now_s();
                rc = io_populate();
                t1 = now_s();
                if (!rc)
                    rc = io_decrease();
            } else {
                rc = io_populate();
                touch_guest();
                t0 = now_s();
                if (!rc)
                    rc = io_decrease();
                t1 = now_s();
            }
            if (rc) {
                mvb_skip_with_error(st, mv_strerror_name(rc));
                break;
            }
            mvb_add_manual_time(st, t1 - t0);
        }
    }
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st));
}

static struct io_bench io_pop = {0}, io_dec = {1};

static void run_madvise(mvb_state_t *st, void *user)
{
    (void)user;
    uint8_t *mem = mmap(NULL, GIB, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
        mvb_skip_with_error(st, "mmap");
        return;
    }
    madvise(mem, GIB, MADV_NOHUGEPAGE);
    uint64_t n;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++) {
            for (size_t off = 0; off < GIB; off += MV_PAGE_SIZE)
                ((volatile uint8_t *)mem)[off] = 1;
            double t0 = now_s();
            /* In 2 MiB pieces, as the engine's decommit batches go. */
            for (size_t off = 0; off < GIB; off += 2u << 20)
                madvise(mem + off, 2u << 20, MADV_DONTNEED);
            mvb_add_manual_time(st, now_s() - t0);
        }
    }
    munmap(mem, GIB);
    mvb_set_items_processed(st, mvb_iterations(st));
}

/* ---- Log-dirty ----------------------------------------------------------------------------- */

/* Log-dirty runs on the 4 KiB guest and leaves it as it found it: logging off, ram_rw. */
static int ld_setup(void *user, int threads)
{
    (void)user;
    (void)threads;
    int rc = fixture_get();
    if (!rc)
        rc = mv_p2m_logdirty_enable(fx.d4k);
    return rc;
}

static void ld_teardown(void *user, int threads)
{
    (void)user;
    (void)threads;
    if (fx.d4k && mv_p2m_logdirty_disable(fx.d4k))
        mvb_report_failure("p2m/logdirty", "disable failed");
}

/* One full pass over the guest; returns the dirty pages found. */
static int ld_pass(uint64_t *bitmap, uint64_t *found)
{
    uint64_t off = 0, done, dirty;
    int rc;
    *found = 0;
    while ((rc = mv_p2m_logdirty_peek_and_clean(fx.d4k, off, fx.gfns - off, bitmap + off / 64,
                                                fx.gfns - off, &done, &dirty)) == MV_EAGAIN) {
        off += done;
        *found += dirty;
    }
    *found += dirty;
    return rc;
}

struct ld_bench {
    uint64_t per_mille; /* pages dirtied per thousand before each pass */
};

static void run_ld_pass(mvb_state_t *st, void *user)
{
    const struct ld_bench *b = user;
    uint64_t *bitmap = calloc(fx.gfns / 64 + 1, sizeof(uint64_t));
    uint64_t seed = 0x1234567ull, n, found = 0;
    if (!bitmap || ld_pass(bitmap, &found)) {
        mvb_skip_with_error(st, "first pass");
        free(bitmap);
        return;
    }
    uint64_t want = fx.gfns * b->per_mille / 1000;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++) {
            /* Dirty the pages (untimed): a stride walk from a random start, no repeats. */
            mv_gfn_t g = mvb_xorshift(&seed) % fx.gfns;
            uint64_t stride = fx.gfns / (want ? want : 1);
            for (uint64_t k = 0; k < want; k++, g = (g + stride) % fx.gfns)
                mv_p2m_write_fault(fx.d4k, g);
            double t0 = now_s();
            int rc = ld_pass(bitmap, &found);
            mvb_add_manual_time(st, now_s() - t0);
            if (rc || found < want * 9 / 10) {
                mvb_skip_with_error(st, rc ? mv_strerror_name(rc) : "pages lost");
                break;
            }
        }
    }
    free(bitmap);
    if (!mvb_error_occurred(st)) {
        mvb_set_items_processed(st, mvb_iterations(st));
        mvb_counter(st, "dirty_pages", (double)found, 0);
    }
}

static struct ld_bench ld_sparse = {.per_mille = 1}, ld_dense = {.per_mille = 500};

static void run_ld_enable(mvb_state_t *st, void *user)
{
    (void)user;
    uint64_t n;
    if (mv_p2m_logdirty_disable(fx.d4k)) {
        mvb_skip_with_error(st, "disable");
        return;
    }
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++) {
            double t0 = now_s();
            int rc = mv_p2m_logdirty_enable(fx.d4k);
            mvb_add_manual_time(st, now_s() - t0);
            if (!rc)
                rc = mv_p2m_logdirty_disable(fx.d4k);
            if (rc) {
                mvb_skip_with_error(st, mv_strerror_name(rc));
                break;
            }
        }
    }
    mv_p2m_logdirty_enable(fx.d4k); /* as ld_teardown expects */
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st));
}

static void run_ld_fault(mvb_state_t *st, void *user)
{
    (void)user;
    uint64_t *bitmap = calloc(fx.gfns / 64 + 1, sizeof(uint64_t));
    uint64_t n, found;
    mv_gfn_t g = 0;
    if (!bitmap || ld_pass(bitmap, &found)) {
        mvb_skip_with_error(st, "first pass");
        free(bitmap);
        return;
    }
    while (mvb_keep_running_batch(st, &n)) {
        double t0 = now_s();
        for (uint64_t i = 0; i < n; i++) {
            if (g == fx.gfns) {
                /* Every page faulted once: protect them all again (untimed). */
                double t1 = now_s();
                ld_pass(bitmap, &found);
                t0 += now_s() - t1;
                g = 0;
            }
            int rc = mv_p2m_write_fault(fx.d4k, g++);
            if (rc) {
                mvb_skip_with_error(st, mv_strerror_name(rc));
                break;
            }
        }
        mvb_add_manual_time(st, now_s() - t0);
    }
    free(bitmap);
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st));
}

/* ---- Registration ------------------------------------------------------------------------ */

static void reg_td(const char *name, mvb_run_fn run, void *user, mvb_setup_fn setup,
                   mvb_teardown_fn teardown, unsigned flags)
{
    if (mvb_register(&(struct mvb_bench){.name = name, .run = run, .user = user,
                                         .setup = setup, .teardown = teardown,
                                         .threads = {1}, .flags = flags})) {
        fprintf(stderr, "memvirt-bench: cannot register %s\n", name);
        exit(1);
    }
}

static void reg(const char *name, mvb_run_fn run, void *user, mvb_setup_fn setup, unsigned flags)
{
    reg_td(name, run, user, setup, NULL, flags);
}

void mvb_register_p2m(void)
{
    reg("p2m/lookup_random_4k", run_lookup, &lk_4k, fx_setup, 0);
    reg("p2m/lookup_random_4k_batched", run_lookup_many, NULL, fx_setup, 0);
    reg("p2m/lookup_random_2m", run_lookup, &lk_2m, fx_setup, 0);
    reg("baseline/flat_lookup_random", run_lookup, &lk_flat, fx_setup, 0);
    reg("p2m/lookup_chase_4k", run_lookup, &ch_4k, fx_setup, 0);
    reg("baseline/flat_lookup_chase", run_lookup, &ch_flat, fx_setup, 0);
    reg("p2m/set_entry_4k", run_set_entry, NULL, fx_setup, 0);
    reg("p2m/populate_1g", run_io, &io_pop, fx_setup, MVB_MANUAL_TIME);
    reg("p2m/decrease_1g", run_io, &io_dec, fx_setup, MVB_MANUAL_TIME);
    reg("baseline/madvise_1g", run_madvise, NULL, NULL, MVB_MANUAL_TIME);
    reg_td("p2m/logdirty_peek_clean_24g_sparse", run_ld_pass, &ld_sparse, ld_setup, ld_teardown,
           MVB_MANUAL_TIME);
    reg_td("p2m/logdirty_peek_clean_24g_dense", run_ld_pass, &ld_dense, ld_setup, ld_teardown,
           MVB_MANUAL_TIME);
    reg_td("p2m/logdirty_enable_24g", run_ld_enable, NULL, ld_setup, ld_teardown,
           MVB_MANUAL_TIME);
    reg_td("p2m/write_fault_logdirty", run_ld_fault, NULL, ld_setup, ld_teardown,
           MVB_MANUAL_TIME);
    if (mvb_register_ratio("p2m/lookup_random_4k", "baseline/flat_lookup_random", 3.0) ||
        mvb_register_ratio("p2m/lookup_random_4k_batched", "baseline/flat_lookup_random", 3.0) ||
        mvb_register_ratio("p2m/lookup_random_2m", "baseline/flat_lookup_random", 3.0) ||
        mvb_register_ratio("p2m/lookup_chase_4k", "baseline/flat_lookup_chase", 1.5) ||
        mvb_register_ratio("p2m/decrease_1g", "baseline/madvise_1g", 1.25)) {
        fprintf(stderr, "memvirt-bench: cannot register the p2m ratios\n");
        exit(1);
    }
}
