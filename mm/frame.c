/*
 * mm/frame.c - the frame table: one 32-byte descriptor per machine frame.
 *
 * Each node's range of machine memory gets its own array of descriptors, so holes between
 * ranges cost nothing; mv__frame() finds the range with a scan of at most MV_MAX_NODES
 * ranges (one compare on a one-node host). Every descriptor starts free and known zero:
 * the platform hands over machine memory decommitted.
 */
#include "mm-internal.h"

int mv__frametable_init(mv_host_t *h)
{
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        const struct mv_node_desc *d = &h->topo.node[i];
        struct mv_heap_node *n = mv__meta_alloc(h, sizeof(*n));
        if (!n)
            return MV_ENOMEM;
        h->node[i] = n;
        n->id = i;
        n->first_mfn = d->first_mfn;
        n->nr_frames = d->nr_frames;
        n->base = d->base;
        size_t bytes = (size_t)d->nr_frames * sizeof(struct mv_frame);
        n->ft = mv__meta_alloc(h, bytes);
        if (!n->ft)
            return MV_ENOMEM;
        h->frametable_bytes += bytes;
        for (uint64_t j = 0; j < d->nr_frames; j++) {
            struct mv_frame *f = &n->ft[j];
            atomic_init(&f->count, 0);
            atomic_init(&f->flags, MV_PGF_ZERO);
            atomic_init(&f->type_info, 0);
            atomic_init(&f->link, MV_INVALID_GFN);
            atomic_init(&f->owner, MV_OWNER_FREE);
            atomic_init(&f->tlbflush, 0);
        }
    }
    return 0;
}

void mv__frametable_fini(mv_host_t *h)
{
    for (uint32_t i = 0; i < h->nr_nodes; i++) {
        struct mv_heap_node *n = h->node[i];
        if (!n)
            continue;
        if (n->ft)
            mv__meta_free(h, n->ft, (size_t)n->nr_frames * sizeof(struct mv_frame));
        mv__meta_free(h, n, sizeof(*n));
        h->node[i] = NULL;
    }
}

MV_API void *mv_frame_va(const mv_host_t *h, mv_mfn_t mfn)
{
    if (!h)
        return NULL;
    struct mv_heap_node *n = mv__mfn_node(h, mfn);
    return n ? mv__frame_va_fast(n, mfn) : NULL;
}

MV_API int mv_frame_node(const mv_host_t *h, mv_mfn_t mfn)
{
    if (!h)
        return MV_EINVAL;
    struct mv_heap_node *n = mv__mfn_node(h, mfn);
    return n ? (int)n->id : MV_ERANGE;
}
