/*
 * mm/host.c - the host: creation from a platform, metadata, logging, fault injection,
 * statistics, and the embedder's frame allocation API.
 *
 * A host is built in a fixed order and torn down in reverse: platform (given, or the
 * default posix one built from the config), topology copy and checks, frame table, heaps,
 * slot caches. Creation either completes or leaves nothing behind.
 */
#include <stdio.h>

#include "mm-internal.h"

#define DEFAULT_CACHE_FRAMES 64u
#define MAX_CACHE_FRAMES 1024u
#define DEFAULT_DECOMMIT_BATCH 512u

/* ---- Metadata, logging, fault injection ---------------------------------------------- */

void *mv__meta_alloc(mv_host_t *h, size_t size)
{
    if (mv__should_fail(h, MV_FAIL_META_ALLOC))
        return NULL;
    void *p = h->plat->meta_alloc(h->plat, size, MV_CACHELINE);
    if (p)
        atomic_fetch_add_explicit(&h->meta_bytes, size, memory_order_relaxed);
    return p;
}

void mv__meta_free(mv_host_t *h, void *p, size_t size)
{
    if (!p)
        return;
    h->plat->meta_free(h->plat, p, size);
    atomic_fetch_sub_explicit(&h->meta_bytes, size, memory_order_relaxed);
}

void mv__log(const mv_host_t *h, int level, const char *fmt, ...)
{
    if (!h->plat->log)
        return;
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    h->plat->log(h->plat, level, buf);
}

static const char *const failpoint_names[MV_FAIL_NR] = {
    [MV_FAIL_HEAP_ALLOC] = "heap.alloc",
    [MV_FAIL_META_ALLOC] = "meta.alloc",
};

bool mv__fail_check_slow(mv_host_t *h, enum mv_fail_point fp)
{
    struct mv_failpoint *p = &h->fail[fp];
    uint64_t c = atomic_load_explicit(&p->count, memory_order_relaxed);
    while (c) {
        uint64_t s = atomic_load_explicit(&p->skip, memory_order_relaxed);
        if (s) {
            if (atomic_compare_exchange_weak_explicit(&p->skip, &s, s - 1,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed))
                return false;
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&p->count, &c, c - 1, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            atomic_fetch_add_explicit(&p->hits, 1, memory_order_relaxed);
            return true;
        }
    }
    return false;
}

MV_API int mv_host_inject_failure(mv_host_t *h, const char *point, uint64_t skip,
                                  uint64_t count)
{
    if (!h || !point)
        return MV_EINVAL;
    for (unsigned i = 0; i < MV_FAIL_NR; i++) {
        if (strcmp(point, failpoint_names[i]))
            continue;
        if (!MV_HAVE_FAULT_INJECTION)
            return MV_ENOSYS;
        atomic_store_explicit(&h->fail[i].count, 0, memory_order_relaxed);
        atomic_store_explicit(&h->fail[i].skip, skip, memory_order_relaxed);
        atomic_store_explicit(&h->fail[i].count, count, memory_order_relaxed);
        bool armed = false;
        for (unsigned j = 0; j < MV_FAIL_NR; j++)
            armed |= atomic_load_explicit(&h->fail[j].count, memory_order_relaxed) != 0;
        atomic_store_explicit(&h->fail_armed, armed, memory_order_relaxed);
        return 0;
    }
    return MV_ENOENT;
}

/* ---- Creation ------------------------------------------------------------------------ */

static int check_platform(const struct mv_platform *p)
{
    if (!p || p->size < sizeof(struct mv_platform))
        return MV_EINVAL;
    if (!p->meta_alloc || !p->meta_free || !p->topology || !p->mem_decommit ||
        !p->clock_ns || !p->slot_id || !p->max_slots || p->max_slots > MV_MAX_SLOTS)
        return MV_EINVAL;
    const struct mv_topology *t = p->topology;
    if (!t->nr_nodes || t->nr_nodes > MV_MAX_NODES)
        return MV_EINVAL;
    mv_mfn_t next = 0;
    for (uint32_t i = 0; i < t->nr_nodes; i++) {
        const struct mv_node_desc *d = &t->node[i];
        if (!d->nr_frames || !d->base || d->first_mfn < next ||
            d->nr_frames > UINT32_MAX - 1 || d->first_mfn + d->nr_frames < d->first_mfn)
            return MV_EINVAL;
        next = d->first_mfn + d->nr_frames;
        for (uint32_t j = 0; j < t->nr_nodes; j++)
            if (!t->distance[i][j] || (i != j && t->distance[i][j] < t->distance[i][i]))
                return MV_EINVAL;
    }
    return 0;
}

/* Nodes in order of distance from each node (ties by number): the fallback order. */
static void build_fallback(mv_host_t *h)
{
    for (uint32_t from = 0; from < h->nr_nodes; from++) {
        uint8_t *row = h->fallback[from];
        for (uint32_t i = 0; i < h->nr_nodes; i++)
            row[i] = (uint8_t)i;
        for (uint32_t i = 1; i < h->nr_nodes; i++) {
            uint8_t v = row[i];
            uint32_t j = i;
            while (j > 0 && h->topo.distance[from][row[j - 1]] > h->topo.distance[from][v]) {
                row[j] = row[j - 1];
                j--;
            }
            row[j] = v;
        }
        /* The node itself first, whatever its SLIT value says. */
        for (uint32_t i = 0; row[0] != from && i < h->nr_nodes; i++) {
            if (row[i] == from) {
                memmove(row + 1, row, i);
                row[0] = (uint8_t)from;
            }
        }
    }
}

MV_API int mv_host_create(const struct mv_host_config *ucfg, mv_host_t **out)
{
    struct mv_host_config cfg;
    int rc = mv__copy_sized(&cfg, sizeof(cfg), ucfg,
                            offsetof(struct mv_host_config, decommit_batch) + sizeof(uint32_t));
    if (rc)
        return rc;
    if (!out)
        return MV_EINVAL;
    if (cfg.slot_cache_frames > MAX_CACHE_FRAMES)
        return MV_EINVAL;

    struct mv_platform *owned = NULL;
    const struct mv_platform *plat = cfg.platform;
    if (!plat) {
#if MV_HAVE_POSIX_PLATFORM
        struct mv_posix_config pc = {
            .size = sizeof(pc), .mem_bytes = cfg.mem_bytes, .topology = cfg.topology};
        rc = mv_posix_platform_create(&pc, &owned);
        if (rc)
            return rc;
        plat = owned;
#else
        return MV_EINVAL;
#endif
    }
    rc = check_platform(plat);
    if (rc)
        goto fail_plat;

    mv_host_t *h = plat->meta_alloc(plat, sizeof(*h), MV_CACHELINE);
    if (!h) {
        rc = MV_ENOMEM;
        goto fail_plat;
    }
    h->plat = plat;
    h->owned_plat = owned;
    h->topo = *plat->topology;
    h->nr_nodes = h->topo.nr_nodes;
    h->max_slots = plat->max_slots;
    h->cache_max = cfg.slot_cache_frames ? cfg.slot_cache_frames : DEFAULT_CACHE_FRAMES;
    h->decommit_batch = cfg.decommit_batch ? cfg.decommit_batch : DEFAULT_DECOMMIT_BATCH;
    atomic_init(&h->meta_bytes, sizeof(*h));
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        h->total_frames += h->topo.node[i].nr_frames;
        h->end_mfn = h->topo.node[i].first_mfn + h->topo.node[i].nr_frames;
    }
    build_fallback(h);
    /* Nodes laid side by side in frame order: one addition gives a frame's address. */
    uintptr_t lin = (uintptr_t)h->topo.node[0].base -
                    (uintptr_t)(h->topo.node[0].first_mfn << MV_PAGE_SHIFT);
    bool linear = true;
    for (uint32_t i = 0; i < h->nr_nodes; i++)
        linear &= (uintptr_t)h->topo.node[i].base ==
                  lin + (uintptr_t)(h->topo.node[i].first_mfn << MV_PAGE_SHIFT);
    h->linear_va = linear && lin ? lin : 0;

    rc = mv__frametable_init(h);
    if (rc)
        goto fail_host;
    h->cache_stride = (sizeof(struct mv_slot_cache) + h->cache_max * sizeof(mv_mfn_t) +
                       MV_CACHELINE - 1) & ~(size_t)(MV_CACHELINE - 1);
    size_t cache_bytes = h->cache_stride * h->max_slots * h->nr_nodes;
    h->caches = mv__meta_alloc(h, cache_bytes);
    if (!h->caches) {
        rc = MV_ENOMEM;
        goto fail_host;
    }
    h->heap_meta_bytes = cache_bytes + h->nr_nodes * sizeof(struct mv_heap_node);
    rc = mv__heap_init(h);
    if (rc)
        goto fail_host;
    atomic_init(&h->flush_clock, 1);
    rc = mv__epoch_init(h);
    if (rc)
        goto fail_host;
    rc = mv__domains_init(h);
    if (rc)
        goto fail_host;
    *out = h;
    return 0;

fail_host:
    mv_host_destroy(h);
    return rc;
fail_plat:
#if MV_HAVE_POSIX_PLATFORM
    mv_posix_platform_destroy(owned);
#endif
    return rc;
}

MV_API void mv_host_destroy(mv_host_t *h)
{
    if (!h)
        return;
    const struct mv_platform *plat = h->plat;
    struct mv_platform *owned = h->owned_plat;
    mv__domains_fini(h);
    mv__epoch_fini(h);
    mv__heap_fini(h);
    if (h->caches)
        mv__meta_free(h, h->caches, h->cache_stride * h->max_slots * h->nr_nodes);
    mv__frametable_fini(h);
    plat->meta_free(plat, h, sizeof(*h));
#if MV_HAVE_POSIX_PLATFORM
    mv_posix_platform_destroy(owned);
#else
    (void)owned;
#endif
}

MV_API const struct mv_platform *mv_host_platform(const mv_host_t *h)
{
    return h ? h->plat : NULL;
}

MV_API const struct mv_topology *mv_host_topology(const mv_host_t *h)
{
    return h ? &h->topo : NULL;
}

/* ---- The embedder's frames ----------------------------------------------------------- */

MV_API int mv_frame_alloc(mv_host_t *h, unsigned order, uint32_t node, uint32_t flags,
                          mv_mfn_t *out)
{
    if (!h)
        return MV_EINVAL;
    return mv__heap_alloc(h, order, node, flags, MV_OWNER_ANON, out);
}

MV_API int mv_frame_free(mv_host_t *h, mv_mfn_t mfn, unsigned order)
{
    if (!h)
        return MV_EINVAL;
    struct mv_frame *f = mv__frame(h, mfn);
    if (!f)
        return MV_ERANGE;
    if (order > MV_MAX_ORDER)
        return MV_EINVAL;
    uint32_t owner = mv__frame_owner(f);
    if (owner == MV_OWNER_FREE || owner == MV_OWNER_PENDING || owner == MV_OWNER_CACHED)
        return MV_EALREADY;
    if (owner != MV_OWNER_ANON)
        return MV_EPERM;
    uint32_t fl = atomic_load_explicit(&f->flags, memory_order_relaxed);
    if (!(fl & MV_PGF_HEAD) || mv__pgf_order(fl) != order)
        return MV_EINVAL;
    if (atomic_load_explicit(&f->count, memory_order_relaxed))
        return MV_EBUSY;
    /*
     * The caller's own frames: it frees each block once, from one thread (a hypervisor
     * that races two frees of one block has a bug of its own, as with Xen's
     * free_domheap_pages); a free after a free is refused above.
     */
    atomic_store_explicit(&f->owner, MV_OWNER_PENDING, memory_order_relaxed);
    mv__heap_free(h, mfn, order);
    return 0;
}

MV_API int mv_host_trim(mv_host_t *h)
{
    return h ? mv__heap_trim(h, false) : MV_EINVAL;
}

MV_API int mv_host_drain(mv_host_t *h)
{
    return h ? mv__heap_trim(h, true) : MV_EINVAL;
}

/* ---- Statistics ---------------------------------------------------------------------- */

MV_API int mv_host_stats(mv_host_t *h, struct mv_host_stats *st)
{
    if (!h)
        return MV_EINVAL;
    int rc = mv__prepare_out(st, sizeof(*st));
    if (rc)
        return rc;
    st->nr_nodes = h->nr_nodes;
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_node_stats *ns = &st->node[i];
        mv__heap_node_stats(h, i, ns);
        st->total_frames += ns->total;
        st->free_frames += ns->free + ns->pending + ns->cached;
        st->committed_frames += ns->committed;
    }
    st->overhead_bytes = atomic_load_explicit(&h->meta_bytes, memory_order_relaxed);
    st->frametable_bytes = h->frametable_bytes;
    st->heap_meta_bytes = h->heap_meta_bytes;
    st->decommit_batches = atomic_load_explicit(&h->decommit_batches, memory_order_relaxed);
    st->decommit_frames = atomic_load_explicit(&h->decommit_frames, memory_order_relaxed);
    st->scrubbed_frames = atomic_load_explicit(&h->scrubbed_frames, memory_order_relaxed);
    st->tlb_flushes = atomic_load_explicit(&h->flush_clock, memory_order_relaxed) - 1;
    st->tlb_flushes_avoided = atomic_load_explicit(&h->flushes_avoided, memory_order_relaxed);
    st->nr_domains = h->nr_domains;
    return 0;
}
