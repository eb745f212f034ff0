/*
 * mm/epoch.c - epoch-based reclamation of engine frames that lock-free readers may hold.
 *
 * p2m lookups walk tables with no lock. A table frame unlinked from a tree may still be
 * under a reader's feet, so it is retired, not freed: tagged with the epoch at which it
 * left, and freed once every reader that was inside then has left. Readers announce
 * themselves in their slot: the scheme needs their store ordered before their table
 * reads. Where the platform offers barrier_all (membarrier, an IPI), readers use a plain
 * store and the reclaimer runs barrier_all before it looks at the slots (an asymmetric
 * fence: lookups are frequent, reclamation rare); otherwise readers use a sequentially
 * consistent exchange. Callers without a slot use a shared counter instead, which only
 * delays reclamation while they read.
 *
 * Retired frames are chained through their descriptors (link word), the epoch tag kept in
 * the flush-stamp word, so retiring allocates nothing. The limbo list's lock is a leaf;
 * frames are freed after it is dropped.
 */
#include "mm-internal.h"

void mv__epoch_retire(mv_host_t *h, mv_mfn_t mfn)
{
    struct mv_frame *f = mv__frame(h, mfn);
    MV_ASSERT(f && mv__frame_owner(f) == MV_OWNER_INTERNAL);
    uint64_t tag = atomic_fetch_add_explicit(&h->epoch, 1, memory_order_seq_cst);
    atomic_store_explicit(&f->tlbflush, (uint32_t)tag, memory_order_relaxed);
    mv_spin_lock(&h->limbo_lock);
    atomic_store_explicit(&f->link, h->limbo_head, memory_order_relaxed);
    h->limbo_head = mfn;
    h->limbo_frames++;
    atomic_store_explicit(&h->limbo_nonempty, true, memory_order_relaxed);
    mv_spin_unlock(&h->limbo_lock);
}

/* The oldest epoch any reader may still be in, or the current one when none reads. */
static uint64_t oldest_reader(mv_host_t *h)
{
    uint64_t now = atomic_load_explicit(&h->epoch, memory_order_seq_cst);
    if (atomic_load_explicit(&h->anon_readers, memory_order_seq_cst))
        return 0;
    uint64_t oldest = now;
    for (uint32_t s = 0; s < h->max_slots; s++) {
        uint64_t e = atomic_load_explicit(&h->slot_epoch[s].e, memory_order_seq_cst);
        if (e && e < oldest)
            oldest = e;
    }
    return oldest;
}

void mv__epoch_reclaim(mv_host_t *h, bool all)
{
    if (!atomic_load_explicit(&h->limbo_nonempty, memory_order_relaxed) && !all)
        return;
    /* Readers that announced with a plain store: make their announcements visible. */
    if (!all && h->plat->barrier_all)
        h->plat->barrier_all(h->plat);
    uint64_t oldest = all ? UINT64_MAX : oldest_reader(h);
    mv_mfn_t ready = MV_INVALID_MFN;
    mv_spin_lock(&h->limbo_lock);
    mv_mfn_t prev = MV_INVALID_MFN, cur = h->limbo_head;
    while (cur != MV_INVALID_MFN) {
        struct mv_frame *f = mv__frame(h, cur);
        mv_mfn_t next = atomic_load_explicit(&f->link, memory_order_relaxed);
        uint32_t tag = atomic_load_explicit(&f->tlbflush, memory_order_relaxed);
        /* Free when every reader present at retirement has left: its epoch was <= tag. */
        if (all || (int32_t)((uint32_t)oldest - tag) > 0) {
            if (prev == MV_INVALID_MFN)
                h->limbo_head = next;
            else
                atomic_store_explicit(&mv__frame(h, prev)->link, next, memory_order_relaxed);
            atomic_store_explicit(&f->link, ready, memory_order_relaxed);
            ready = cur;
            h->limbo_frames--;
        } else {
            prev = cur;
        }
        cur = next;
    }
    atomic_store_explicit(&h->limbo_nonempty, h->limbo_frames != 0, memory_order_relaxed);
    mv_spin_unlock(&h->limbo_lock);
    while (ready != MV_INVALID_MFN) {
        struct mv_frame *f = mv__frame(h, ready);
        mv_mfn_t next = atomic_load_explicit(&f->link, memory_order_relaxed);
        atomic_store_explicit(&f->tlbflush, 0, memory_order_relaxed);
        atomic_store_explicit(&f->link, MV_INVALID_GFN, memory_order_relaxed);
        atomic_store_explicit(&f->owner, MV_OWNER_PENDING, memory_order_release);
        mv__heap_free(h, ready, 0);
        ready = next;
    }
}

int mv__epoch_init(mv_host_t *h)
{
    mv_spin_init(&h->limbo_lock, MV_LOCK_RANK_LEAF);
    h->limbo_head = MV_INVALID_MFN;
    atomic_init(&h->epoch, 1);
    h->slot_epoch = mv__meta_alloc(h, h->max_slots * sizeof(*h->slot_epoch));
    return h->slot_epoch ? 0 : MV_ENOMEM;
}

void mv__epoch_fini(mv_host_t *h)
{
    if (!h->slot_epoch)
        return;
    mv__epoch_reclaim(h, true);
    mv__meta_free(h, h->slot_epoch, h->max_slots * sizeof(*h->slot_epoch));
    h->slot_epoch = NULL;
}
