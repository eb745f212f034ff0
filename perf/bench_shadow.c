/*
 * perf/bench_shadow.c - shadow paging (shadow/) on one vCPU, with same-run baselines.
 *
 *   shadow/fault_leaf           mv_shadow_page_fault for a 4 KiB page whose upper shadows
 *                               (L4, L3, L2, L1) exist and whose shadow leaf does not: the
 *                               guest walk, the checks and the one leaf written; item =
 *                               fault. Guest: 64 MiB mapped by 4 KiB PTEs (16384 pages, 32
 *                               L1 tables), touched in a fixed random order.
 *   shadow/invlpg               mv_shadow_invlpg of a page whose shadow leaf is present (the
 *                               leaf dropped, the one-address flush requested); item = INVLPG
 *   baseline/shadow_walk_64m    the least a fault does, in plain C over the same guest tables
 *                               and in the same order: four dependent table reads (gfn ->
 *                               host address through a flat array, as baseline/flat_lookup
 *                               does for the p2m), the data gfn -> mfn, one leaf stored;
 *                               item = walk
 *   shadow/emulated_write       mv_shadow_emulate_write of one 8-byte guest PTE into a
 *                               shadowed L1, alternating between two present mappings of two
 *                               frames, so every write changes the shadow leaf (and flushes);
 *                               after every 8 writes the guest uses the mapping (a read
 *                               fault through that L1, not timed), as a guest does: a frame
 *                               written while never walked loses its shadows (oos.c)
 *   baseline/shadow_memcpy_8b   memcpy of the same 8 bytes into a plain page
 *   shadow/cr3_switch_warm      mv_shadow_set_cr3 cycling over 4 guest roots whose shadows
 *                               exist (the vCPU keeps 4 roots); item = CR3 load
 *   baseline/shadow_root_cache_4 the same lookup in plain C: the CR3's gfn through a flat
 *                               gfn -> mfn array, then a 4-slot most-recently-used cache
 *   shadow/fault_in_1g          a fault on every 4 KiB page of 1 GiB mapped by 4 KiB PTEs
 *                               (512 L1 tables under one L2), in address order, starting
 *                               with no shadow below the root; item = page (fault)
 *   baseline/shadow_walk_1g     the walk of baseline/shadow_walk_64m over those 1 GiB, in
 *                               address order
 *
 * The baselines carry "shadow" in their names so that --benchmark_filter=shadow runs them
 * with what they are compared with. On a shared virtual machine the speed of the CPU itself
 * can change from one process to the next (the baselines move with the benchmarks): read the
 * ratios, or repeat the run, before comparing absolute figures across runs.
 *
 * How the faults are timed. A fault can be repeated only once its leaf is gone, and Google
 * Benchmark's PauseTiming/ResumeTiming pair costs about 1.5 us here (it reads the thread's
 * CPU clock through a system call), five times the fault itself, so the untimed work is
 * kept out by manual time instead: the loop takes 256 addresses at a time, drops their
 * leaves with INVLPG, then faults them back in, reading the monotonic clock before, between
 * and after the two phases (three clock reads per 256 operations; each interval has the
 * clock's own cost, measured once per run, taken out: mvb_interval_ns). shadow/fault_leaf counts
 * the faults' time and shadow/invlpg the INVLPGs' of the same loop, so each is alone; every
 * other leaf of the 64 MiB stays present, as in a running guest. After a run the shadow
 * statistics must show one leaf zapped per INVLPG, which proves every fault built a leaf.
 * shadow/fault_in_1g times the 262144 faults of an iteration the same way and drops the
 * shadows between iterations with mv_shadow_blow, untimed. The pool's frames were
 * allocated by one untimed pass while the fixture was built, so an iteration reuses free
 * pool frames (as a guest that has run for a while does) and its pool (1024 frames) never
 * evicts; a run that evicted would fail.
 *
 * Every fault is a user-mode write (W|U) to a writable page, and the guest's entries
 * already have their accessed and dirty bits set, so every fault takes the same path: no
 * guest-memory update for A/D, a writable leaf. Guest memory is populated in 2 MiB
 * extents (2 MiB p2m leaves), and never touched, so the 1 GiB guest costs only its tables.
 *
 * One host, built on first use and kept to the end, holds the two guests; at exit the
 * guests are destroyed and the host audited (mvb_fixture_teardown). shadow/fault_leaf and
 * shadow/emulated_write also print their absolute goals (100 ns and 50 ns per item, on
 * average over the run). shadow/emulated_write times each group of 8 writes between two
 * clock reads, less the clock's own cost (about 25 ns a read on a virtual machine: 3 ns a
 * write if it were left in).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <memvirt/memvirt.h>

#include "bench.h"
#include "fixture.h"

#if defined(__GNUC__)
#define MVB_NOINLINE __attribute__((noinline))
#else
#define MVB_NOINLINE
#endif

#define PTE_UPPER (MV_PTE_P | MV_PTE_RW | MV_PTE_US | MV_PTE_A)
#define PTE_LEAF (MV_PTE_P | MV_PTE_RW | MV_PTE_US | MV_PTE_A | MV_PTE_D)
#define FAULT_EC (MV_PFEC_W | MV_PFEC_U)
#define VA_BASE (1ull << 30) /* L4[0] L3[1]: both guests map their region here */
#define GROUP 256u           /* addresses per INVLPG-then-fault round */

/*
 * The small guest (fault_leaf, invlpg, emulated_write, cr3_switch_warm), by gfn:
 * roots (L4) 1..4, all pointing at the L3 at 8; the L2 at 9; the region's L1 tables at
 * 16..47 (L2[0..31]); the emulated-write L1 at 48 (L2[32]); the region's pages from 512;
 * the two frames the emulated write alternates between right after them.
 */
#define S_ROOTS 4u
#define S_L3 8u
#define S_L2 9u
#define S_L1 16u
#define S_NL1 32u
#define S_EMU_L1 48u
#define S_DATA 512u
#define S_PAGES (S_NL1 * 512u)
#define S_EMU_A (S_DATA + S_PAGES)
#define S_EMU_B (S_EMU_A + 1)
#define S_GFNS (S_EMU_A + 512u)
#define S_VA_EMU (VA_BASE + ((uint64_t)S_NL1 << 21))

/* The 1 GiB guest: L4 1, L3 2, L2 3, L1 tables 512..1023, pages from 1024. */
#define B_L4 1u
#define B_L3 2u
#define B_L2 3u
#define B_L1 512u
#define B_DATA 1024u
#define B_PAGES (512u * 512u)
#define B_GFNS (B_DATA + B_PAGES)
#define B_POOL 1024u

struct guest {
    mv_domain_t *d;
    mv_vcpu_t *v;
    uint64_t gfns;
    mv_mfn_t *mfn;     /* gfn -> mfn: the baselines' p2m */
    uint64_t **va;     /* gfn -> host address of its frame */
    bool tried, failed;
};

static struct {
    mv_host_t *host;
    bool tried, failed;
    struct guest small, big;
    mv_paddr_t roots[S_ROOTS];    /* the small guest's shadow roots */
    uint32_t perm[S_PAGES];       /* the order the 64 MiB is touched in */
    uint64_t *leaves;             /* the baselines' output: one leaf per page */
} fx;



/* ---- The fixture ------------------------------------------------------------------------- */

static void fixture_fini(void)
{
    if (!fx.host)
        return;
    mv_domain_t *doms[] = {fx.small.d, fx.big.d};
    mvb_fixture_teardown("shadow", fx.host, doms, 2);
    struct guest *gs[] = {&fx.small, &fx.big};
    for (size_t i = 0; i < 2; i++) {
        free(gs[i]->mfn);
        free(gs[i]->va);
    }
    free(fx.leaves);
    fx.host = NULL;
}

static int host_get(void)
{
    if (fx.tried)
        return fx.failed ? -1 : 0;
    fx.tried = true;
    /* Both guests, their p2m and shadow frames, with room to spare. */
    struct mv_host_config hc = {.size = sizeof hc, .mem_bytes = 1280ull << 20,
                                .topology = "pack:1 numa:1 core:2 pu:1"};
    fx.leaves = calloc(B_PAGES, sizeof(*fx.leaves));
    if (!fx.leaves || mv_host_create(&hc, &fx.host)) {
        fx.failed = true;
        return -1;
    }
    atexit(fixture_fini);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (uint32_t i = 0; i < S_PAGES; i++)
        fx.perm[i] = i;
    for (uint32_t i = S_PAGES - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(mvb_xorshift(&seed) % (i + 1));
        uint32_t t = fx.perm[i];
        fx.perm[i] = fx.perm[j];
        fx.perm[j] = t;
    }
    return 0;
}

/* A shadow-paging guest of `gfns` gfns (2 MiB extents), its vCPU in long mode on cr3. */
/* flags: the small guest keeps every shadow in sync (the trapped paths are measured). */
static int guest_create(struct guest *g, uint32_t domid, uint64_t gfns, uint64_t pool,
                        mv_gfn_t cr3_gfn, uint32_t flags)
{
    struct mv_domain_config dc = {.size = sizeof dc, .domid = domid, .type = MV_DOMAIN_HVM,
                                  .paging = MV_PAGING_SHADOW, .nr_vcpus = 1, .max_pages = gfns,
                                  .node_affinity = MV_NODE_ANY, .shadow_pool_pages = pool,
                                  .shadow_pool_max_pages = pool,
                                  .flags = flags};
    int rc = mv_domain_create(fx.host, &dc, &g->d);
    if (rc)
        return rc;
    g->v = mv_domain_vcpu(g->d, 0);
    g->gfns = gfns;
    for (mv_gfn_t e = 0; e < gfns; e += 512) {
        uint64_t done;
        while ((rc = mv_populate_physmap(g->d, &e, 1, 9, MV_NODE_ANY, &done)) == MV_EAGAIN)
            ;
        if (rc)
            return rc;
    }
    g->mfn = malloc(gfns * sizeof(*g->mfn));
    g->va = malloc(gfns * sizeof(*g->va));
    if (!g->mfn || !g->va)
        return MV_ENOMEM;
    for (mv_gfn_t x = 0; x < gfns; x++) {
        struct mv_p2m_entry e;
        if ((rc = mv_p2m_lookup(g->d, x, &e)))
            return rc;
        g->mfn[x] = e.mfn;
        g->va[x] = mv_frame_va(fx.host, e.mfn);
    }
    struct mv_vcpu_state st = {.size = sizeof st, .cr0 = 1 | MV_CR0_WP | MV_CR0_PG,
                               .cr3 = cr3_gfn << MV_PAGE_SHIFT, .cr4 = MV_CR4_PAE | MV_CR4_PGE,
                               .efer = MV_EFER_LME | (1ull << 10) | MV_EFER_NXE};
    return mv_vcpu_set_state(g->v, &st);
}

/* Write one guest table: entry i = ((first + i * step) << 12) | flags for i < n, else 0. */
static int put_table(struct guest *g, mv_gfn_t table, unsigned n, mv_gfn_t first,
                     uint64_t step, uint64_t flags)
{
    uint64_t t[512] = {0};
    for (unsigned i = 0; i < n; i++)
        t[i] = ((first + i * step) << MV_PAGE_SHIFT) | flags;
    return mv_guest_phys_write(g->d, table << MV_PAGE_SHIFT, t, sizeof t);
}

/* Write entry idx of a guest table (the others are left as they are: zero). */
static int put_entry(struct guest *g, mv_gfn_t table, unsigned idx, uint64_t e)
{
    return mv_guest_phys_write(g->d, (table << MV_PAGE_SHIFT) + 8ull * idx, &e, sizeof e);
}

static int fault(mv_vcpu_t *v, uint64_t va)
{
    struct mv_shadow_outcome o;
    int rc = mv_shadow_page_fault(v, va, FAULT_EC, 0, &o);
    return rc ? rc : o.kind == MV_SHADOW_FIXED ? 0 : MV_EINVAL;
}

static inline uint64_t small_va(uint32_t page)
{
    return VA_BASE + ((uint64_t)page << MV_PAGE_SHIFT);
}

static int small_build(void)
{
    struct guest *g = &fx.small;
    int rc = guest_create(g, 1, S_GFNS, 0, 1, MV_DOMF_SHADOW_SYNC);
    for (mv_gfn_t r = 1; !rc && r <= S_ROOTS; r++)
        rc = put_table(g, r, 1, S_L3, 0, PTE_UPPER);
    if (!rc)
        rc = put_entry(g, S_L3, 1, ((uint64_t)S_L2 << MV_PAGE_SHIFT) | PTE_UPPER);
    if (!rc) {
        uint64_t t[512] = {0};
        for (unsigned i = 0; i < S_NL1; i++)
            t[i] = ((uint64_t)(S_L1 + i) << MV_PAGE_SHIFT) | PTE_UPPER;
        t[S_NL1] = ((uint64_t)S_EMU_L1 << MV_PAGE_SHIFT) | PTE_UPPER;
        rc = mv_guest_phys_write(g->d, (mv_paddr_t)S_L2 << MV_PAGE_SHIFT, t, sizeof t);
    }
    for (unsigned i = 0; !rc && i < S_NL1; i++)
        rc = put_table(g, S_L1 + i, 512, S_DATA + 512 * i, 1, PTE_LEAF);
    if (!rc)
        rc = put_table(g, S_EMU_L1, 1, S_EMU_A, 0, PTE_LEAF);
    if (rc)
        return rc;
    /* Every root's shadow with its path; the region and the emulated L1 under the root at gfn 1. */
    for (unsigned r = S_ROOTS; r-- > 0;) {
        if ((rc = mv_shadow_set_cr3(g->v, (uint64_t)(1 + r) << MV_PAGE_SHIFT, &fx.roots[r])) ||
            (rc = fault(g->v, small_va(0))))
            return rc;
    }
    for (uint32_t p = 0; !rc && p < S_PAGES; p++)
        rc = fault(g->v, small_va(p));
    return rc ? rc : fault(g->v, S_VA_EMU);
}

static int big_build(void)
{
    struct guest *g = &fx.big;
    int rc = guest_create(g, 2, B_GFNS, B_POOL, B_L4, 0);
    if (!rc)
        rc = put_table(g, B_L4, 1, B_L3, 0, PTE_UPPER);
    if (!rc)
        rc = put_entry(g, B_L3, 1, ((uint64_t)B_L2 << MV_PAGE_SHIFT) | PTE_UPPER);
    if (!rc)
        rc = put_table(g, B_L2, 512, B_L1, 1, PTE_UPPER);
    for (unsigned i = 0; !rc && i < 512; i++)
        rc = put_table(g, B_L1 + i, 512, B_DATA + 512ull * i, 1, PTE_LEAF);
    mv_paddr_t root;
    if (!rc)
        rc = mv_shadow_set_cr3(g->v, (uint64_t)B_L4 << MV_PAGE_SHIFT, &root);
    /* One pass fills the pool with frames; the runs start from what blow leaves. */
    for (uint64_t p = 0; !rc && p < B_PAGES; p++)
        rc = fault(g->v, VA_BASE + (p << MV_PAGE_SHIFT));
    return rc ? rc : mv_shadow_blow(g->d);
}

static int guest_get(struct guest *g, int (*build)(void))
{
    if (host_get())
        return -1;
    if (!g->tried) {
        g->tried = true;
        int rc = build();
        if (rc) {
            fprintf(stderr, "memvirt-bench: shadow fixture: %s\n", mv_strerror_name(rc));
            g->failed = true;
        }
    }
    return g->failed ? -1 : 0;
}

static int small_setup(void *user, int threads)
{
    (void)user;
    (void)threads;
    return guest_get(&fx.small, small_build);
}

static int big_setup(void *user, int threads)
{
    (void)user;
    (void)threads;
    return guest_get(&fx.big, big_build);
}

/* The domain's shadow statistics (all zero when they cannot be read). */
static struct mv_shadow_stats stats_of(mv_domain_t *d)
{
    struct mv_shadow_stats s = {.size = sizeof s};
    if (mv_shadow_stats(d, &s))
        memset(&s, 0, sizeof s);
    return s;
}

/* Keep the first error of a loop (the loops check nothing else per operation). */
static inline void first_error(int *rc, int r)
{
    if (r && !*rc)
        *rc = r;
}

/* ---- The baseline walk ------------------------------------------------------------------- */

/* Four levels, each entry checked present and its gfn inside the guest; 0 when it fails. */
static inline uint64_t flat_walk(const struct guest *g, mv_gfn_t root, uint64_t va)
{
    const uint64_t *t = g->va[root];
    uint64_t e;
    for (int lv = 3;; lv--) {
        e = t[(va >> (12 + 9 * lv)) & 511];
        mv_gfn_t gfn = (e & MV_PTE_ADDR_MASK) >> MV_PAGE_SHIFT;
        if (!(e & MV_PTE_P) || gfn >= g->gfns)
            return 0;
        if (lv == 0)
            return (g->mfn[gfn] << MV_PAGE_SHIFT) | (e & PTE_LEAF);
        t = g->va[gfn];
    }
}

struct walk_bench {
    bool big;
};

static void run_walk(mvb_state_t *st, void *user)
{
    const struct walk_bench *b = user;
    const struct guest *g = b->big ? &fx.big : &fx.small;
    const uint32_t pages = b->big ? B_PAGES : S_PAGES;
    const mv_gfn_t root = b->big ? B_L4 : 1;
    uint64_t n, bad = 0;
    uint32_t pos = 0;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++) {
            /* The big guest in address order, page by page; the small one in fx.perm's. */
            uint32_t p = b->big ? pos : fx.perm[pos];
            uint64_t leaf = flat_walk(g, root, VA_BASE + ((uint64_t)p << MV_PAGE_SHIFT));
            bad += !leaf;
            fx.leaves[p] = leaf;
            pos = pos + 1 == pages ? 0 : pos + 1;
        }
    }
    if (bad)
        mvb_skip_with_error(st, "a walk failed");
    else
        mvb_set_items_processed(st, mvb_iterations(st));
}

/* ---- shadow/fault_leaf and shadow/invlpg ------------------------------------------------- */

struct leaf_bench {
    bool time_invlpg; /* else the faults are timed */
};

/* INVLPG, then fault, the k pages from position pos of fx.perm on: the first error. */
static int invlpg_group(mv_vcpu_t *v, uint32_t pos, uint32_t k)
{
    int rc = 0;
    for (uint32_t j = 0; j < k; j++)
        first_error(&rc, mv_shadow_invlpg(v, small_va(fx.perm[(pos + j) % S_PAGES])));
    return rc;
}

static int fault_group(mv_vcpu_t *v, uint32_t pos, uint32_t k)
{
    int rc = 0;
    for (uint32_t j = 0; j < k; j++)
        first_error(&rc, fault(v, small_va(fx.perm[(pos + j) % S_PAGES])));
    return rc;
}

static void run_fault_leaf(mvb_state_t *st, void *user)
{
    const struct leaf_bench *b = user;
    mv_vcpu_t *v = fx.small.v;
    mv_domain_t *d = fx.small.d;
    mv_paddr_t root;
    int rc = mv_shadow_set_cr3(v, 1ull << MV_PAGE_SHIFT, &root);
    uint64_t zapped0 = stats_of(d).zapped, n;
    uint32_t pos = 0;
    while (!rc && mvb_keep_running_batch(st, &n)) {
        uint64_t timed = 0;
        for (uint64_t done = 0; done < n && !rc;) {
            uint32_t k = n - done < GROUP ? (uint32_t)(n - done) : GROUP;
            uint64_t t0 = mvb_now_ns();
            rc = invlpg_group(v, pos, k);
            uint64_t t1 = mvb_now_ns();
            first_error(&rc, fault_group(v, pos, k));
            uint64_t t2 = mvb_now_ns();
            timed += b->time_invlpg ? mvb_interval_ns(t0, t1) : mvb_interval_ns(t1, t2);
            pos = (pos + k) % S_PAGES;
            done += k;
        }
        mvb_add_manual_time(st, (double)timed * 1e-9);
    }
    if (rc) {
        mvb_skip_with_error(st, rc == MV_EINVAL ? "a fault was not fixed" : mv_strerror_name(rc));
        return;
    }
    /* Every INVLPG found a leaf: so every fault had built one. */
    if (stats_of(d).zapped - zapped0 != mvb_iterations(st)) {
        mvb_skip_with_error(st, "an INVLPG found no leaf");
        return;
    }
    mvb_set_items_processed(st, mvb_iterations(st));
}

static struct leaf_bench lb_fault = {.time_invlpg = false}, lb_invlpg = {.time_invlpg = true};
static struct walk_bench wb_small = {.big = false}, wb_big = {.big = true};

/* ---- shadow/emulated_write and baseline/shadow_memcpy_8b --------------------------------- */

/* The leaf the shadow tables give for va (a walk of the shadow root), or 0. */
static uint64_t shadow_leaf(mv_paddr_t root, uint64_t va)
{
    uint64_t t = root;
    for (int lv = 3; lv >= 0; lv--) {
        const uint64_t *tab = mv_frame_va(fx.host, t >> MV_PAGE_SHIFT);
        uint64_t e = tab ? tab[(va >> (12 + 9 * lv)) & 511] : 0;
        if (!(e & MV_PTE_P))
            return 0;
        if (lv == 0)
            return e;
        t = e & MV_PTE_ADDR_MASK;
    }
    return 0;
}

static void run_emulated_write(mvb_state_t *st, void *user)
{
    (void)user;
    struct guest *g = &fx.small;
    const uint64_t val[2] = {((uint64_t)S_EMU_B << MV_PAGE_SHIFT) | PTE_LEAF,
                             ((uint64_t)S_EMU_A << MV_PAGE_SHIFT) | PTE_LEAF};
    const mv_paddr_t gpa = (mv_paddr_t)S_EMU_L1 << MV_PAGE_SHIFT;
    uint64_t em0 = stats_of(g->d).emulated_writes, n, k = 0;
    int rc = 0;
    while (mvb_keep_running_batch(st, &n)) {
        uint64_t timed = 0;
        for (uint64_t done = 0; done < n && !rc;) {
            uint64_t m = n - done < 8 ? n - done : 8;
            uint64_t t0 = mvb_now_ns();
            for (uint64_t i = 0; i < m; i++, k++)
                first_error(&rc, mv_shadow_emulate_write(g->v, gpa, &val[k & 1], 8));
            timed += mvb_interval_ns(t0, mvb_now_ns());
            first_error(&rc, fault(g->v, S_VA_EMU)); /* the guest uses what it mapped */
            done += m;
        }
        mvb_add_manual_time(st, (double)timed * 1e-9);
        if (rc)
            break;
    }
    /* Leave entry 0 mapping S_EMU_A, and check that the shadow leaf followed the writes. */
    if (!rc && (k & 1))
        rc = mv_shadow_emulate_write(g->v, gpa, &val[1], 8);
    uint64_t leaf = shadow_leaf(fx.roots[0], S_VA_EMU);
    if (rc)
        mvb_skip_with_error(st, mv_strerror_name(rc));
    else if (stats_of(g->d).emulated_writes - em0 != k + (k & 1))
        mvb_skip_with_error(st, "emulated writes not counted");
    else if ((leaf & MV_PTE_ADDR_MASK) >> MV_PAGE_SHIFT != g->mfn[S_EMU_A])
        mvb_skip_with_error(st, "the shadow leaf did not follow the guest entry");
    else
        mvb_set_items_processed(st, mvb_iterations(st));
}

static void run_memcpy_8b(mvb_state_t *st, void *user)
{
    (void)user;
    static uint64_t page[512];
    const uint64_t val[2] = {((uint64_t)S_EMU_B << MV_PAGE_SHIFT) | PTE_LEAF,
                             ((uint64_t)S_EMU_A << MV_PAGE_SHIFT) | PTE_LEAF};
    uint64_t n, k = 0;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++, k++) {
            memcpy(&page[0], &val[k & 1], 8);
            __asm__ __volatile__("" : : "r"(page) : "memory"); /* each store happens */
        }
    }
    mvb_set_items_processed(st, mvb_iterations(st));
}

/* ---- shadow/cr3_switch_warm and baseline/shadow_root_cache_4 ----------------------------- */

static void run_cr3_switch(mvb_state_t *st, void *user)
{
    (void)user;
    struct guest *g = &fx.small;
    uint64_t l4s = stats_of(g->d).shadows[4], n, k = 0, wrong = 0;
    int rc = 0;
    while (mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n; i++, k++) {
            mv_paddr_t root;
            first_error(&rc, mv_shadow_set_cr3(g->v, (1 + (k & 3)) << MV_PAGE_SHIFT, &root));
            wrong += root != fx.roots[k & 3];
        }
        if (rc)
            break;
    }
    if (rc)
        mvb_skip_with_error(st, mv_strerror_name(rc));
    else if (wrong || stats_of(g->d).shadows[4] != l4s)
        mvb_skip_with_error(st, "a root was not the warm one");
    else
        mvb_set_items_processed(st, mvb_iterations(st));
}

struct root_cache {
    mv_gfn_t gfn[4];
    mv_paddr_t root[4];
};

/* The CR3 gfn checked through the flat p2m, then found in a 4-slot MRU cache (0: miss). */
static MVB_NOINLINE mv_paddr_t root_cache_load(struct root_cache *c, const struct guest *g,
                                               uint64_t cr3)
{
    mv_gfn_t gfn = (cr3 & MV_PTE_ADDR_MASK) >> MV_PAGE_SHIFT;
    if (gfn >= g->gfns || g->mfn[gfn] == MV_INVALID_MFN)
        return 0;
    for (unsigned k = 0; k < 4; k++) {
        if (c->gfn[k] != gfn)
            continue;
        mv_paddr_t r = c->root[k];
        for (; k > 0; k--) {
            c->gfn[k] = c->gfn[k - 1];
            c->root[k] = c->root[k - 1];
        }
        c->gfn[0] = gfn;
        c->root[0] = r;
        return r;
    }
    return 0;
}

static void run_root_cache(mvb_state_t *st, void *user)
{
    (void)user;
    struct root_cache c;
    for (unsigned r = 0; r < S_ROOTS; r++) {
        c.gfn[r] = 1 + r;
        c.root[r] = fx.roots[r];
    }
    uint64_t n, k = 0, wrong = 0;
    while (mvb_keep_running_batch(st, &n))
        for (uint64_t i = 0; i < n; i++, k++)
            wrong += root_cache_load(&c, &fx.small, (1 + (k & 3)) << MV_PAGE_SHIFT) !=
                     fx.roots[k & 3];
    if (wrong)
        mvb_skip_with_error(st, "a root was missed");
    else
        mvb_set_items_processed(st, mvb_iterations(st));
}

/* ---- shadow/fault_in_1g ------------------------------------------------------------------ */

static void run_fault_in_1g(mvb_state_t *st, void *user)
{
    (void)user;
    struct guest *g = &fx.big;
    uint64_t ev0 = stats_of(g->d).evictions, n;
    int rc = 0;
    while (!rc && mvb_keep_running_batch(st, &n)) {
        for (uint64_t i = 0; i < n && !rc; i++) {
            if ((rc = mv_shadow_blow(g->d)))
                break;
            uint64_t t0 = mvb_now_ns();
            for (uint64_t p = 0; p < B_PAGES; p++)
                first_error(&rc, fault(g->v, VA_BASE + (p << MV_PAGE_SHIFT)));
            mvb_add_manual_time(st, (double)(mvb_now_ns() - t0) * 1e-9);
            if (!rc && stats_of(g->d).shadows[1] != 512)
                rc = MV_ENOENT;
        }
    }
    if (rc)
        mvb_skip_with_error(st, rc == MV_EINVAL   ? "a fault was not fixed"
                                : rc == MV_ENOENT ? "not every L1 was shadowed"
                                                  : mv_strerror_name(rc));
    else if (stats_of(g->d).evictions != ev0)
        mvb_skip_with_error(st, "the pool evicted: the measure would not be a fault-in");
    else
        mvb_set_items_processed(st, mvb_iterations(st) * B_PAGES);
}

/* ---- Registration ------------------------------------------------------------------------ */

static void reg(const char *name, mvb_run_fn run, void *user, mvb_setup_fn setup, unsigned flags)
{
    if (mvb_register(&(struct mvb_bench){.name = name, .run = run, .user = user,
                                         .setup = setup, .threads = {1}, .flags = flags})) {
        fprintf(stderr, "memvirt-bench: cannot register %s\n", name);
        exit(1);
    }
}

void mvb_register_shadow(void)
{
    reg("shadow/fault_leaf", run_fault_leaf, &lb_fault, small_setup, MVB_MANUAL_TIME);
    reg("shadow/invlpg", run_fault_leaf, &lb_invlpg, small_setup, MVB_MANUAL_TIME);
    reg("baseline/shadow_walk_64m", run_walk, &wb_small, small_setup, 0);
    reg("shadow/emulated_write", run_emulated_write, NULL, small_setup, MVB_MANUAL_TIME);
    reg("baseline/shadow_memcpy_8b", run_memcpy_8b, NULL, NULL, 0);
    reg("shadow/cr3_switch_warm", run_cr3_switch, NULL, small_setup, 0);
    reg("baseline/shadow_root_cache_4", run_root_cache, NULL, small_setup, 0);
    reg("shadow/fault_in_1g", run_fault_in_1g, NULL, big_setup, MVB_MANUAL_TIME);
    reg("baseline/shadow_walk_1g", run_walk, &wb_big, big_setup, 0);
    if (mvb_register_ratio("shadow/fault_leaf", "baseline/shadow_walk_64m", 0) ||
        mvb_register_ratio("shadow/invlpg", "baseline/shadow_walk_64m", 0) ||
        mvb_register_ratio("shadow/emulated_write", "baseline/shadow_memcpy_8b", 0) ||
        mvb_register_ratio("shadow/cr3_switch_warm", "baseline/shadow_root_cache_4", 0) ||
        mvb_register_ratio("shadow/fault_in_1g", "baseline/shadow_walk_1g", 0) ||
        mvb_register_goal_ns("shadow/fault_leaf", 100) ||
        mvb_register_goal_ns("shadow/emulated_write", 50)) {
        fprintf(stderr, "memvirt-bench: cannot register the shadow ratios\n");
        exit(1);
    }
}
