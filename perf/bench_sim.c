/*
 * perf/bench_sim.c - the simulator's hardware vCPU, per access.
 *
 *   sim/tlb_hit          a translation served by the TLB
 *   sim/walk_pv          a full 4-level walk of machine-address tables (INVLPG before each)
 *   sim/walk_hap         a two-dimensional walk: 4 guest levels, each through the 4-level
 *                        EPT-format p2m, then the page itself (INVLPG before each)
 *   sim/walk_oracle      the oracle's answer for the same HAP access (p2m lookups)
 *   sim/workload_forky_pv, sim/workload_forky_hap, sim/workload_forky_shadow
 *                        the forky preset on 2 domains x 2 vCPUs, oracle off; item = one
 *                        guest operation
 *   sim/verify_corpus    --verify over the corpus image (shared/corpus, or MEMVIRT_CORPUS):
 *                        items are vCPU translations (read, write, fetch per page), each
 *                        checked against the oracle; skipped with an error without the image
 *
 * Walk benchmarks spread their accesses over 512 pages of one L1 table, so the guest's
 * tables stay in the host's caches: what is measured is the walker, not memory latency.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "sim.h"

#define PAGES 1024u
#define NVA 512u
#define VA0 ((1ull << 39) | (2ull << 30) | (3ull << 21))

struct simfx {
    mv_sim_t *s;
    mv_domain_t *pv, *hvm;
    mv_sim_vcpu_t *vpv, *vhap;
    bool failed, built;
};

static struct simfx fx;

static mv_mfn_t mfn_of(mv_domain_t *d, mv_gfn_t g)
{
    struct mv_p2m_entry e;
    return mv_p2m_lookup(d, g, &e) ? MV_INVALID_MFN : e.mfn;
}

static int guest(mv_domain_t **out, bool hap, uint32_t id)
{
    struct mv_domain_config c = {.size = sizeof(c), .domid = id,
                                 .type = hap ? MV_DOMAIN_HVM : MV_DOMAIN_PV,
                                 .paging = hap ? MV_PAGING_HAP : MV_PAGING_PV, .nr_vcpus = 1,
                                 .max_pages = PAGES, .node_affinity = MV_NODE_ANY};
    mv_domain_t *d;
    int rc = mv_domain_create(mv_sim_host(fx.s), &c, &d);
    uint64_t done;
    for (mv_gfn_t g = 0; !rc && g < PAGES; g++)
        rc = mv_populate_physmap(d, &g, 1, 0, MV_NODE_ANY, &done);
    if (rc)
        return rc;
    /* L4 gfn 1, L3 2, L2 3, L1 4; pages from gfn 16. Entries hold gpas or machine addresses. */
    mv_host_t *h = mv_sim_host(fx.s);
    uint64_t a[PAGES];
    for (mv_gfn_t g = 0; g < PAGES; g++)
        a[g] = hap ? g << MV_PAGE_SHIFT : mfn_of(d, g) << MV_PAGE_SHIFT;
    uint64_t *l4 = mv_frame_va(h, mfn_of(d, 1)), *l3 = mv_frame_va(h, mfn_of(d, 2));
    uint64_t *l2 = mv_frame_va(h, mfn_of(d, 3)), *l1 = mv_frame_va(h, mfn_of(d, 4));
    const uint64_t f = MV_PTE_P | MV_PTE_RW | MV_PTE_US;
    l4[1] = a[2] | f;
    l3[2] = a[3] | f;
    l2[3] = a[4] | f;
    for (unsigned i = 0; i < NVA; i++)
        l1[i] = a[16 + i] | f;
    struct mv_vcpu_state st = {.size = sizeof(st), .cr0 = 1 | MV_CR0_WP | MV_CR0_PG,
                               .cr3 = 1ull << MV_PAGE_SHIFT, .cr4 = MV_CR4_PAE | MV_CR4_PGE,
                               .efer = MV_EFER_LME | (1ull << 10) | MV_EFER_NXE};
    if ((rc = mv_vcpu_set_state(mv_domain_vcpu(d, 0), &st)) || (rc = mv_sim_attach(fx.s, d)))
        return rc;
    *out = d;
    return 0;
}

static void fixture_fini(void)
{
    if (!fx.s)
        return;
    mv_domain_t *doms[] = {fx.pv, fx.hvm};
    for (size_t i = 0; i < 2; i++) {
        int rc;
        if (!doms[i])
            continue;
        mv_sim_detach(fx.s, doms[i]);
        while ((rc = mv_domain_destroy(doms[i])) == MV_EAGAIN)
            ;
    }
    if (mv_host_audit(mv_sim_host(fx.s), NULL))
        mvb_report_failure("sim", "audit not clean at exit");
    mv_sim_destroy(fx.s);
    fx.s = NULL;
}

static int fixture(void *user, int threads)
{
    (void)user;
    (void)threads;
    if (fx.built)
        return fx.failed ? -1 : 0;
    fx.built = true;
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 64ull << 20};
    if (mv_sim_create(&c, &fx.s) || guest(&fx.pv, false, 1) || guest(&fx.hvm, true, 2)) {
        fx.failed = true;
        return -1;
    }
    fx.vpv = mv_sim_vcpu(fx.s, fx.pv, 0);
    fx.vhap = mv_sim_vcpu(fx.s, fx.hvm, 0);
    mv_sim_set_root_override(fx.vpv, mfn_of(fx.pv, 1));
    atexit(fixture_fini);
    return 0;
}

static void run_tlb_hit(mvb_state_t *st, void *user)
{
    (void)user;
    struct mv_sim_result r;
    uint64_t n, i = 0, bad = 0;
    for (unsigned k = 0; k < 64; k++)
        mv_sim_translate(fx.vhap, VA0 + ((uint64_t)k << 12), MV_SIM_READ, 0, &r);
    while (mvb_keep_running_batch(st, &n))
        for (uint64_t j = 0; j < n; j++, i++)
            bad += mv_sim_translate(fx.vhap, VA0 + ((i & 63) << 12), MV_SIM_READ, 0, &r);
    if (bad)
        mvb_skip_with_error(st, "a TLB-hit access failed");
    mvb_set_items_processed(st, mvb_iterations(st));
}

static void run_walk(mvb_state_t *st, mv_sim_vcpu_t *sv)
{
    struct mv_sim_result r;
    uint64_t n, i = 0, bad = 0;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t j = 0; j < n; j++, i++) {
            uint64_t va = VA0 + ((i % NVA) << 12);
            mv_sim_invlpg(sv, va);
            bad += mv_sim_translate(sv, va, MV_SIM_READ, 0, &r);
        }
    }
    if (bad)
        mvb_skip_with_error(st, "a walk failed");
    mvb_set_items_processed(st, mvb_iterations(st));
}

static void run_walk_pv(mvb_state_t *st, void *user)
{
    (void)user;
    run_walk(st, fx.vpv);
}

static void run_walk_hap(mvb_state_t *st, void *user)
{
    (void)user;
    run_walk(st, fx.vhap);
}

static void run_walk_oracle(mvb_state_t *st, void *user)
{
    (void)user;
    struct mv_sim_result r;
    uint64_t n, i = 0, bad = 0;
    while (mvb_keep_running_batch(st, &n))
        for (uint64_t j = 0; j < n; j++, i++)
            bad += mv_sim_oracle(fx.vhap, VA0 + ((i % NVA) << 12), MV_SIM_READ, 0, &r);
    if (bad)
        mvb_skip_with_error(st, "an oracle access failed");
    mvb_set_items_processed(st, mvb_iterations(st));
}

/* ---- The corpus ----------------------------------------------------------------------------- */

struct corpusfx {
    mv_sim_t *s;
    struct mv_sim_image *img;
    bool tried;
    char err[600];
};

static struct corpusfx cfx;

static void corpus_fini(void)
{
    if (!cfx.s)
        return;
    mv_sim_image_free(cfx.s, cfx.img);
    if (mv_host_audit(mv_sim_host(cfx.s), NULL))
        mvb_report_failure("sim/verify_corpus", "audit not clean at exit");
    mv_sim_destroy(cfx.s);
    cfx.s = NULL;
}

static int corpus_setup(void *user, int threads)
{
    (void)user;
    (void)threads;
    if (cfx.tried)
        return 0;
    cfx.tried = true;
    const char *env = getenv("MEMVIRT_CORPUS");
    const char *dir = env && *env ? env : MV_BENCH_CORPUS;
    char path[520], cpath[520];
    snprintf(path, sizeof(path), "%s/guest-A.mem.zst", dir);
    snprintf(cpath, sizeof(cpath), "%s/guest-A.cr3", dir);
    long long cr3;
    FILE *f = fopen(cpath, "r");
    if (!f || fscanf(f, "%lli", &cr3) != 1) {
        snprintf(cfx.err, sizeof(cfx.err), "no corpus at %s (set MEMVIRT_CORPUS)", dir);
        if (f)
            fclose(f);
        return 0;
    }
    fclose(f);
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 320ull << 20};
    struct mv_sim_image_config ic = {.size = sizeof(ic), .path = path, .cr3 = (uint64_t)cr3,
                                     .domid = 1, .paging = MV_PAGING_HAP};
    if (mv_sim_create(&c, &cfx.s) ||
        mv_sim_image_import(cfx.s, &ic, &cfx.img, cfx.err, sizeof(cfx.err))) {
        if (!cfx.err[0])
            snprintf(cfx.err, sizeof(cfx.err), "cannot build the simulator");
        return 0;
    }
    atexit(corpus_fini);
    return 0;
}

static void run_verify_corpus(mvb_state_t *st, void *user)
{
    (void)user;
    if (!cfx.img) {
        mvb_skip_with_error(st, cfx.err[0] ? cfx.err : "no corpus");
        return;
    }
    uint64_t n, items = 0;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t j = 0; j < n; j++) {
            uint64_t verified, mismatches;
            if (mv_sim_image_verify(cfx.s, cfx.img, NULL, NULL, &verified, &mismatches) ||
                mismatches) {
                mvb_skip_with_error(st, "verification found mismatches");
                break;
            }
            items += 3 * verified;
        }
    }
    mvb_set_items_processed(st, items);
}

/* ---- Workloads ------------------------------------------------------------------------------ */

/*
 * The forky preset on two domains of two vCPUs, oracle off (what is measured is the guest
 * and the engine, not the checker); item = one guest operation (a step).
 */
struct wlfx {
    bool hvm, hap, sync;
    mv_sim_t *s;
    mv_sim_run_t *r;
};

static int wl_setup(void *user, int threads)
{
    struct wlfx *w = user;
    (void)threads;
    struct mv_sim_workload_params wp;
    if (mv_sim_workload_preset("forky", &wp))
        return 1;
    uint64_t need = 2 * wp.footprint * (wp.max_procs + 2) * MV_PAGE_SIZE + (64u << 20);
    struct mv_sim_config sc = {.size = sizeof(sc), .mem_bytes = need};
    struct mv_sim_run_config rc = {.size = sizeof(rc), .workload = "forky", .domains = 2,
                                   .vcpus = 2, .seed = 1, .hvm = w->hvm, .hap = w->hap,
                                   .check = false, .shadow_sync = w->sync};
    if (mv_sim_create(&sc, &w->s))
        return 1;
    return mv_sim_run_create(w->s, &rc, &w->r) ? 1 : 0;
}

static void wl_teardown(void *user, int threads)
{
    struct wlfx *w = user;
    (void)threads;
    if (w->r)
        mv_sim_run_destroy(w->r);
    if (w->s)
        mv_sim_destroy(w->s);
    w->r = NULL;
    w->s = NULL;
}

static void run_workload(mvb_state_t *st, void *user)
{
    struct wlfx *w = user;
    uint64_t n;
    while (mvb_keep_running_batch(st, &n)) {
        int rc = mv_sim_run_steps(w->r, n);
        if (rc) {
            mvb_skip_with_error(st, mv_strerror_name(rc));
            break;
        }
    }
    if (!mvb_error_occurred(st))
        mvb_set_items_processed(st, mvb_iterations(st));
}

static struct wlfx wl_pv = {.hvm = false}, wl_hap = {.hvm = true, .hap = true},
                   wl_shadow = {.hvm = true}, wl_oos = {.hvm = true},
                   wl_no_oos = {.hvm = true, .sync = true};

/*
 * shadow/forky_oos and shadow/forky_no_oos: the same seeded forky run with out-of-sync L1s
 * on and off, in modeled guest time. In-process emulation has no trap cost, so the time
 * is the engine's (its handlers of the vCPUs' VM exits, measured around each call) plus
 * MEMVIRT_BENCH_EXIT_NS nanoseconds (default 1500) for each of those exits (shadow page
 * faults, CR3 loads, INVLPG, flushes); Google Benchmark gets it as manual time. The guest
 * model's and the simulated MMU's own time is left out: a real guest's would differ.
 * Counters: exits and emulated writes per guest operation, engine ns per operation, and
 * the exit cost used.
 */
static double exit_ns(void)
{
    const char *e = getenv("MEMVIRT_BENCH_EXIT_NS");
    double v = e && *e ? strtod(e, NULL) : 1500.0;
    return v > 0 ? v : 1500.0;
}

/* Exits, emulated writes and engine time of every vCPU of the run so far. */
static void run_exits(struct wlfx *w, uint64_t *exits, uint64_t *emulated, uint64_t *ens)
{
    *exits = *emulated = *ens = 0;
    for (uint32_t i = 0; i < 2; i++) {
        mv_domain_t *d = mv_sim_guest_domain(mv_sim_run_guest(w->r, i));
        for (uint32_t v = 0; v < 2; v++) {
            struct mv_sim_vcpu_stats vs;
            mv_sim_vcpu_stats(mv_sim_vcpu(w->s, d, v), &vs);
            *exits += vs.exits;
            *emulated += vs.emulated_writes;
            *ens += vs.engine_ns;
        }
    }
}

static void run_modeled(mvb_state_t *st, void *user)
{
    struct wlfx *w = user;
    double cost = exit_ns();
    uint64_t n, x0, e0, t0, x1, e1, t1;
    run_exits(w, &x0, &e0, &t0);
    while (mvb_keep_running_batch(st, &n)) {
        uint64_t xa, ea, ta, xb, eb, tb;
        run_exits(w, &xa, &ea, &ta);
        int rc = mv_sim_run_steps(w->r, n);
        run_exits(w, &xb, &eb, &tb);
        if (rc) {
            mvb_skip_with_error(st, mv_strerror_name(rc));
            break;
        }
        mvb_add_manual_time(st, ((double)(tb - ta) + (double)(xb - xa) * cost) * 1e-9);
    }
    if (mvb_error_occurred(st))
        return;
    run_exits(w, &x1, &e1, &t1);
    mvb_set_items_processed(st, mvb_iterations(st));
    mvb_counter(st, "exits_per_op", (double)(x1 - x0), MVB_COUNTER_PER_ITERATION);
    mvb_counter(st, "emulated_per_op", (double)(e1 - e0), MVB_COUNTER_PER_ITERATION);
    mvb_counter(st, "engine_ns_per_op", (double)(t1 - t0), MVB_COUNTER_PER_ITERATION);
    mvb_counter(st, "exit_ns", cost, 0);
}

static void reg(const char *name, mvb_run_fn run, mvb_setup_fn setup)
{
    if (mvb_register(&(struct mvb_bench){.name = name, .run = run, .setup = setup}))
        mvb_report_failure(name, "cannot register");
}

void mvb_register_sim(void)
{
    struct wlfx *wl[] = {&wl_pv, &wl_hap, &wl_shadow};
    const char *wl_names[] = {"sim/workload_forky_pv", "sim/workload_forky_hap",
                              "sim/workload_forky_shadow"};
    for (size_t i = 0; i < 3; i++)
        if (mvb_register(&(struct mvb_bench){.name = wl_names[i], .run = run_workload,
                                             .user = wl[i], .setup = wl_setup,
                                             .teardown = wl_teardown}))
            mvb_report_failure(wl_names[i], "cannot register");
    struct wlfx *mo[] = {&wl_oos, &wl_no_oos};
    const char *mo_names[] = {"shadow/forky_oos", "shadow/forky_no_oos"};
    for (size_t i = 0; i < 2; i++)
        if (mvb_register(&(struct mvb_bench){.name = mo_names[i], .run = run_modeled,
                                             .user = mo[i], .setup = wl_setup,
                                             .teardown = wl_teardown,
                                             .flags = MVB_MANUAL_TIME}))
            mvb_report_failure(mo_names[i], "cannot register");
    /* Goal: out-of-sync at least 25% faster in modeled guest time. */
    if (mvb_register_ratio("shadow/forky_oos", "shadow/forky_no_oos", 1 / 1.25))
        mvb_report_failure("shadow/forky_oos", "cannot register its ratio");
    reg("sim/tlb_hit", run_tlb_hit, fixture);
    reg("sim/walk_pv", run_walk_pv, fixture);
    reg("sim/walk_hap", run_walk_hap, fixture);
    reg("sim/walk_oracle", run_walk_oracle, fixture);
    /* The corpus lives beside the repository (CI has it); elsewhere say so and go on. */
    const char *env = getenv("MEMVIRT_CORPUS");
    char cpath[520];
    snprintf(cpath, sizeof(cpath), "%s/guest-A.cr3", env && *env ? env : MV_BENCH_CORPUS);
    FILE *f = fopen(cpath, "r");
    if (f) {
        fclose(f);
        reg("sim/verify_corpus", run_verify_corpus, corpus_setup);
    } else {
        fprintf(stderr, "memvirt-bench: sim/verify_corpus not run: no corpus at %s "
                        "(set MEMVIRT_CORPUS)\n", cpath);
    }
}
