/*
 * examples/embed.c - how a hypervisor embeds memvirt, with a platform of its own.
 *
 * A hypervisor does not run on Linux's allocator, clock or NUMA library. It hands memvirt
 * one struct mv_platform (memvirt/platform.h) that describes its machine and provides the
 * few services the engine needs; the engine calls nothing else. This program plays such a
 * hypervisor on a Linux host:
 *
 *   machine memory  one mmap(MAP_NORESERVE) reservation per node, 2 nodes x 32 MiB; node 1
 *                   starts at 4 GiB in machine frame numbers, above a hole, as RAM above
 *                   a PCI hole would
 *   topology        a struct mv_topology filled in by hand: SLIT distances 10 and 20
 *   metadata        aligned_alloc + memset (a hypervisor would use its own heap)
 *   decommit        madvise(MADV_DONTNEED): the frames read as zero afterwards
 *   log             stderr, with the level
 *   clock           CLOCK_MONOTONIC
 *   TLB flush       counted: no vCPU runs here, so there is nothing to flush
 *   slot            a small id per thread from an atomic counter (a hypervisor would
 *                   return the number of the physical CPU, with preemption off)
 *
 * Then it creates a host on that platform, allocates blocks of several orders on each node,
 * writes them through mv_frame_va, checks that no block overwrote another, frees them,
 * trims, allocates them again zeroed to see that decommitted memory reads as zero, prints
 * the per-node statistics and audits. It uses
 * nothing of the default posix platform (memvirt/posix.h), so it works with a library built
 * with -Dposix_platform=false. The exit status is 0 only when every step succeeded.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* MAP_NORESERVE, MADV_NOHUGEPAGE */
#endif
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <memvirt/memvirt.h>

#define NR_NODES 2u
#define NODE_BYTES (32ull << 20)
#define NODE_FRAMES (NODE_BYTES >> MV_PAGE_SHIFT)
#define MAX_SLOTS 8u

/* Where each node's range starts in machine frame numbers: 0 and 4 GiB. */
static const mv_mfn_t node_first_mfn[NR_NODES] = {0x0, 0x100000};

/* The blocks allocated on each node: BLOCKS_PER_ORDER of each of these orders. */
static const unsigned block_orders[] = {0, 1, 2, 4, 9};
#define NR_ORDERS (sizeof(block_orders) / sizeof(block_orders[0]))
#define BLOCKS_PER_ORDER 4u
#define BLOCKS_PER_NODE (NR_ORDERS * BLOCKS_PER_ORDER)

/* ---- The hypervisor's platform -------------------------------------------------------- */

/* The hypervisor's own state. The engine sees `plat`; plat.ctx points back here. */
struct hv {
    struct mv_platform plat;
    struct mv_topology topo;
    atomic_uint_least64_t meta_bytes;      /* metadata the engine holds now */
    atomic_uint_least64_t decommit_calls;
    atomic_uint_least64_t decommit_frames;
    atomic_uint_least64_t flushes;
    atomic_uint next_slot;
};

static struct hv *hv_of(const struct mv_platform *p)
{
    return p->ctx;
}

static void *hv_meta_alloc(const struct mv_platform *p, size_t size, size_t align)
{
    /* C11's aligned_alloc wants a size that is a multiple of the alignment. */
    size_t rounded = size ? (size + align - 1) & ~(align - 1) : align;
    void *mem = aligned_alloc(align, rounded);
    if (!mem)
        return NULL;
    memset(mem, 0, rounded);
    atomic_fetch_add(&hv_of(p)->meta_bytes, size);
    return mem;
}

static void hv_meta_free(const struct mv_platform *p, void *ptr, size_t size)
{
    free(ptr);
    atomic_fetch_sub(&hv_of(p)->meta_bytes, size);
}

/* The host address of machine frame `mfn`, or NULL when [mfn, mfn + count) is not RAM. */
static void *hv_machine_va(const struct hv *hv, mv_mfn_t mfn, uint64_t count)
{
    for (uint32_t i = 0; i < hv->topo.nr_nodes; i++) {
        const struct mv_node_desc *d = &hv->topo.node[i];
        if (mfn >= d->first_mfn && mfn - d->first_mfn + count <= d->nr_frames)
            return (char *)d->base + ((mfn - d->first_mfn) << MV_PAGE_SHIFT);
    }
    return NULL;
}

static int hv_mem_decommit(const struct mv_platform *p, mv_mfn_t first, uint64_t count)
{
    struct hv *hv = hv_of(p);
    void *va = hv_machine_va(hv, first, count);
    if (!va || madvise(va, count << MV_PAGE_SHIFT, MADV_DONTNEED) != 0)
        return MV_EIO;
    atomic_fetch_add(&hv->decommit_calls, 1);
    atomic_fetch_add(&hv->decommit_frames, count);
    return 0;
}

static void hv_log(const struct mv_platform *p, int level, const char *msg)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    const char *name = level >= 0 && level <= MV_LOG_DEBUG ? names[level] : "?";
    fprintf(stderr, "embed: memvirt %s: %s\n", name, msg);
}

static uint64_t hv_clock_ns(const struct mv_platform *p)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Called under engine locks: it must not call into the engine (it only counts here). */
static void hv_tlb_flush(const struct mv_platform *p, const struct mv_flush_request *req)
{
    atomic_fetch_add(&hv_of(p)->flushes, 1);
}

static _Thread_local uint32_t this_thread_slot = MV_SLOT_NONE;

static uint32_t hv_slot_id(const struct mv_platform *p)
{
    if (this_thread_slot == MV_SLOT_NONE) {
        unsigned id = atomic_fetch_add(&hv_of(p)->next_slot, 1);
        if (id >= p->max_slots)
            return MV_SLOT_NONE; /* the engine then takes its slot-less paths */
        this_thread_slot = id;
    }
    return this_thread_slot;
}

/* Reserve each node's machine memory and describe the machine. */
static bool hv_init(struct hv *hv)
{
    memset(hv, 0, sizeof(*hv));
    hv->topo.nr_nodes = NR_NODES;
    hv->topo.nr_cpus = NR_NODES;
    for (uint32_t i = 0; i < NR_NODES; i++) {
        void *base = mmap(NULL, NODE_BYTES, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED) {
            perror("embed: mmap");
            return false;
        }
        /* Keep transparent huge pages out, so resident memory follows frames. */
        (void)madvise(base, NODE_BYTES, MADV_NOHUGEPAGE);
        struct mv_node_desc *d = &hv->topo.node[i];
        d->first_mfn = node_first_mfn[i];
        d->nr_frames = NODE_FRAMES;
        d->base = base;
        d->nr_cpus = 1;
        d->os_index = UINT32_MAX; /* not a node the host OS knows */
        for (uint32_t j = 0; j < NR_NODES; j++)
            hv->topo.distance[i][j] = i == j ? 10 : 20;
    }

    struct mv_platform *p = &hv->plat;
    p->size = sizeof(*p);
    p->ctx = hv;
    p->meta_alloc = hv_meta_alloc;
    p->meta_free = hv_meta_free;
    p->topology = &hv->topo;
    p->mem_commit = NULL; /* optional: a frame is committed by its first write */
    p->mem_decommit = hv_mem_decommit;
    p->log = hv_log;
    p->trace = NULL;      /* optional */
    p->clock_ns = hv_clock_ns;
    p->tlb_flush = hv_tlb_flush;
    p->max_slots = MAX_SLOTS;
    p->slot_id = hv_slot_id;
    return true;
}

static void hv_fini(struct hv *hv)
{
    for (uint32_t i = 0; i < hv->topo.nr_nodes; i++)
        if (hv->topo.node[i].base)
            munmap(hv->topo.node[i].base, NODE_BYTES);
}

/* ---- Using the host ------------------------------------------------------------------- */

/* Report a failed call; true when rc is 0. */
static bool ok(int rc, const char *what)
{
    if (rc != 0)
        fprintf(stderr, "embed: %s: %s (%s)\n", what, mv_strerror_name(rc), mv_strerror(rc));
    return rc == 0;
}

struct block {
    mv_mfn_t mfn;
    unsigned order;
};

static bool all_zero(const unsigned char *p, size_t bytes)
{
    for (size_t i = 0; i < bytes; i++)
        if (p[i])
            return false;
    return true;
}

/*
 * Allocate every block of the list on `node` (MV_ALLOC_EXACT_NODE: no fallback) and check
 * what the API promises: natural alignment, the right node, and the frame's address at the
 * place the topology says. With `zero`, ask for zeroed frames and check that they are.
 */
static bool alloc_blocks(mv_host_t *h, uint32_t node, bool zero, struct block *blocks)
{
    const struct mv_node_desc *d = &mv_host_topology(h)->node[node];
    uint32_t flags = MV_ALLOC_EXACT_NODE | (zero ? MV_ALLOC_ZERO : 0);
    for (size_t i = 0; i < BLOCKS_PER_NODE; i++) {
        struct block *b = &blocks[i];
        b->order = block_orders[i / BLOCKS_PER_ORDER];
        if (!ok(mv_frame_alloc(h, b->order, node, flags, &b->mfn), "mv_frame_alloc"))
            return false;
        const unsigned char *va = mv_frame_va(h, b->mfn);
        size_t bytes = (size_t)MV_PAGE_SIZE << b->order;
        if (b->mfn & ((1u << b->order) - 1) || mv_frame_node(h, b->mfn) != (int)node ||
            va != (const unsigned char *)d->base + ((b->mfn - d->first_mfn) << MV_PAGE_SHIFT)) {
            fprintf(stderr, "embed: block 0x%" PRIx64 " order %u is misplaced\n", b->mfn,
                    b->order);
            return false;
        }
        if (zero && !all_zero(va, bytes)) {
            fprintf(stderr, "embed: block 0x%" PRIx64 " was asked zeroed but is not\n", b->mfn);
            return false;
        }
    }
    return true;
}

/* The word `w` of block `mfn` holds this, so that overlapping blocks would show. */
static uint64_t pattern(mv_mfn_t mfn, size_t w)
{
    return mfn * 0x9e3779b97f4a7c15ull + w;
}

/* Fill each block with its pattern (check = false) or check that it is still there. */
static bool pattern_blocks(mv_host_t *h, const struct block *blocks, bool check)
{
    for (size_t i = 0; i < BLOCKS_PER_NODE; i++) {
        uint64_t *words = mv_frame_va(h, blocks[i].mfn);
        size_t nr_words = ((size_t)MV_PAGE_SIZE << blocks[i].order) / sizeof(uint64_t);
        for (size_t w = 0; w < nr_words; w++) {
            if (!check) {
                words[w] = pattern(blocks[i].mfn, w);
            } else if (words[w] != pattern(blocks[i].mfn, w)) {
                fprintf(stderr, "embed: block 0x%" PRIx64 " was overwritten\n", blocks[i].mfn);
                return false;
            }
        }
    }
    return true;
}

/* Free every block; freeing the first one a second time must be refused, changing nothing. */
static bool free_blocks(mv_host_t *h, const struct block *blocks)
{
    for (size_t i = 0; i < BLOCKS_PER_NODE; i++)
        if (!ok(mv_frame_free(h, blocks[i].mfn, blocks[i].order), "mv_frame_free"))
            return false;
    int rc = mv_frame_free(h, blocks[0].mfn, blocks[0].order);
    if (rc != MV_EALREADY) {
        fprintf(stderr, "embed: a double free returned %s, not MV_EALREADY\n",
                mv_strerror_name(rc));
        return false;
    }
    return true;
}

static uint64_t frames_per_node(void)
{
    uint64_t frames = 0;
    for (size_t i = 0; i < NR_ORDERS; i++)
        frames += (uint64_t)BLOCKS_PER_ORDER << block_orders[i];
    return frames;
}

static void print_stats(mv_host_t *h, const char *when)
{
    struct mv_host_stats st;
    memset(&st, 0, sizeof(st));
    st.size = sizeof(st);
    if (!ok(mv_host_stats(h, &st), "mv_host_stats"))
        return;
    printf("%s:\n", when);
    for (uint32_t i = 0; i < st.nr_nodes; i++) {
        const struct mv_node_stats *n = &st.node[i];
        printf("  node %u  mfn 0x%06" PRIx64 "..0x%06" PRIx64 "  total %" PRIu64
               "  free %" PRIu64 " (+%" PRIu64 " pending, +%" PRIu64 " cached)"
               "  allocated %" PRIu64 "  committed %" PRIu64 "\n",
               i, n->first_mfn, n->first_mfn + n->total - 1, n->total, n->free, n->pending,
               n->cached, n->allocated, n->committed);
        printf("          free blocks by order:");
        for (unsigned o = 0; o <= MV_MAX_ORDER; o++)
            if (n->free_by_order[o])
                printf(" %u:%" PRIu64, o, n->free_by_order[o]);
        printf("\n");
    }
    printf("  engine metadata %" PRIu64 " KiB (frame table %" PRIu64 " KiB), "
           "%" PRIu64 " decommit batches (%" PRIu64 " frames), %" PRIu64 " frames scrubbed\n",
           st.overhead_bytes >> 10, st.frametable_bytes >> 10, st.decommit_batches,
           st.decommit_frames, st.scrubbed_frames);
}

/* True when every frame is back on the heaps (free, pending or cached) and none is held. */
static bool all_free(mv_host_t *h)
{
    struct mv_host_stats st;
    memset(&st, 0, sizeof(st));
    st.size = sizeof(st);
    if (!ok(mv_host_stats(h, &st), "mv_host_stats"))
        return false;
    bool clean = st.free_frames == st.total_frames;
    for (uint32_t i = 0; i < st.nr_nodes; i++)
        clean = clean && st.node[i].allocated == 0;
    if (!clean)
        fprintf(stderr, "embed: %" PRIu64 " of %" PRIu64 " frames are not free\n",
                st.total_frames - st.free_frames, st.total_frames);
    return clean;
}

static bool audit(mv_host_t *h)
{
    struct mv_audit_report rep;
    memset(&rep, 0, sizeof(rep));
    rep.size = sizeof(rep);
    int rc = mv_host_audit(h, &rep);
    if (rc == 0) {
        printf("audit: clean (%" PRIu64 " frames checked)\n", rep.checked_frames);
        return true;
    }
    if (rc != MV_EUCLEAN)
        return ok(rc, "mv_host_audit");
    printf("audit: %" PRIu64 " violation(s)\n", rep.nr_violations);
    for (uint64_t i = 0; i < rep.nr_violations && i < MV_AUDIT_MAX_RECORDED; i++) {
        const struct mv_audit_violation *v = &rep.v[i];
        printf("  %s %s mfn 0x%" PRIx64 " domain %" PRIu32 " expected 0x%" PRIx64
               " found 0x%" PRIx64 "\n",
               v->invariant, v->what, v->mfn, v->domid, v->detail[0], v->detail[1]);
    }
    return false;
}

/*
 * One round on every node: allocate every block and write its pattern (first round) or
 * check that it reads zero (second round); then check the patterns, free and trim.
 */
static bool run_round(mv_host_t *h, bool zero, bool show_stats)
{
    static struct block blocks[NR_NODES][BLOCKS_PER_NODE];
    for (uint32_t node = 0; node < NR_NODES; node++) {
        if (!alloc_blocks(h, node, zero, blocks[node]))
            return false;
        if (!zero && !pattern_blocks(h, blocks[node], false))
            return false;
    }
    if (show_stats)
        print_stats(h, "while the blocks are held");
    for (uint32_t node = 0; node < NR_NODES; node++) {
        if (!zero && !pattern_blocks(h, blocks[node], true))
            return false;
        if (!free_blocks(h, blocks[node]))
            return false;
    }
    return ok(mv_host_trim(h), "mv_host_trim") && all_free(h);
}

/*
 * A guest's life as the hypervisor drives it: create an HVM domain with two vCPUs, set a
 * vCPU's control state, give it frames on node 1, hold one while the domain dies, and
 * destroy it (calling again while it says MV_EAGAIN or MV_EBUSY).
 */
static bool run_domain(mv_host_t *h)
{
    struct mv_domain_config dc;
    memset(&dc, 0, sizeof(dc));
    dc.size = sizeof(dc);
    dc.domid = 1;
    dc.type = MV_DOMAIN_HVM;
    dc.paging = MV_PAGING_HAP;
    dc.nr_vcpus = 2;
    dc.max_pages = 4096;
    dc.node_affinity = 1;
    mv_domain_t *d = NULL;
    if (!ok(mv_domain_create(h, &dc, &d), "mv_domain_create"))
        return false;

    struct mv_vcpu_state vs = {.size = sizeof(vs)};
    mv_vcpu_t *v = mv_domain_vcpu(d, 1);
    bool good = ok(mv_vcpu_get_state(v, &vs), "mv_vcpu_get_state");
    vs.cr4 |= MV_CR4_PGE | MV_CR4_SMEP;
    vs.efer |= MV_EFER_NXE;
    good = good && ok(mv_vcpu_set_state(v, &vs), "mv_vcpu_set_state");

    mv_mfn_t big = 0, small = 0;
    good = good && ok(mv_domain_alloc_frames(d, 9, MV_NODE_ANY, MV_ALLOC_ZERO, &big),
                      "mv_domain_alloc_frames(order 9)");
    good = good && ok(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &small),
                      "mv_domain_alloc_frames(order 0)");
    /* The frame is typed writable while a (pretend) writable mapping of it exists. */
    good = good && ok(mv_page_get_typed(d, small, MV_PGT_WRITABLE), "mv_page_get_typed");
    good = good && ok(mv_page_put_typed(d, small), "mv_page_put_typed");
    /* An in-flight hold, e.g. the emulator reading the frame, keeps it past destroy. */
    good = good && ok(mv_page_get(d, big), "mv_page_get");

    /* Guest memory through the p2m: a 2 MiB extent at gfn 0, looked up, 4 KiB ballooned out. */
    mv_gfn_t extent = 0, piece = 5;
    uint64_t done = 0;
    good = good && ok(mv_populate_physmap(d, &extent, 1, 9, MV_NODE_ANY, &done),
                      "mv_populate_physmap");
    struct mv_p2m_entry pe;
    good = good && ok(mv_p2m_lookup(d, 5, &pe), "mv_p2m_lookup");
    if (good)
        printf("gfn 5 -> mfn %#" PRIx64 " (%s leaf, EPT root at %#" PRIx64 ")\n", pe.mfn,
               pe.order == 9 ? "2 MiB" : "4 KiB", mv_p2m_root(d));
    good = good && ok(mv_decrease_reservation(d, &piece, 1, 0, &done), "mv_decrease_reservation");
    good = good && ok(mv_p2m_lookup(d, 5, &pe), "mv_p2m_lookup") && pe.type == MV_P2M_INVALID;

    struct mv_domain_stats ds = {.size = sizeof(ds)};
    good = good && ok(mv_domain_stats(d, &ds), "mv_domain_stats");
    printf("domain %u: %" PRIu64 " pages (max %" PRIu64 ") on node %d, %u vCPUs\n",
           ds.domid, ds.pages, ds.max_pages, mv_frame_node(h, big), ds.nr_vcpus);

    int rc, calls = 0;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN || rc == MV_EBUSY) {
        if (rc == MV_EBUSY && !ok(mv_page_put(d, big), "mv_page_put"))
            return false;
        calls++;
    }
    good = ok(rc, "mv_domain_destroy") && good;
    printf("domain destroyed in %d calls\n", calls + 1);
    return good;
}

int main(void)
{
    printf("memvirt %s, embedded with the hypervisor's own platform "
           "(posix platform built in: %s)\n",
           mv_version(), MV_HAVE_POSIX_PLATFORM ? "yes" : "no");

    static struct hv hv;
    if (!hv_init(&hv)) {
        hv_fini(&hv);
        return 1;
    }

    struct mv_host_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.size = sizeof(cfg);
    cfg.platform = &hv.plat; /* mem_bytes and topology are for the posix platform only */
    mv_host_t *h = NULL;
    if (!ok(mv_host_create(&cfg, &h), "mv_host_create")) {
        hv_fini(&hv);
        return 1;
    }

    bool good = run_round(h, false, true) && run_round(h, true, false) && run_domain(h);
    print_stats(h, good ? "after freeing and trimming" : "after a failure");
    good = audit(h) && good;

    mv_host_destroy(h);
    uint64_t leaked = atomic_load(&hv.meta_bytes);
    if (leaked) {
        fprintf(stderr, "embed: %" PRIu64 " bytes of metadata not given back\n", leaked);
        good = false;
    }
    hv_fini(&hv);

    printf("embed: %s - %u nodes, %zu blocks (%" PRIu64 " frames) per node allocated, "
           "written, freed and reallocated zeroed; %" PRIu64 " decommit calls (%" PRIu64
           " frames), %" PRIu64 " TLB flushes\n",
           good ? "OK" : "FAILED", NR_NODES, (size_t)BLOCKS_PER_NODE, frames_per_node(),
           (uint64_t)atomic_load(&hv.decommit_calls), (uint64_t)atomic_load(&hv.decommit_frames),
           (uint64_t)atomic_load(&hv.flushes));
    return good ? 0 : 1;
}
