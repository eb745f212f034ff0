/*
 * mm/flush.c - the TLB flush clock (Xen's tlbflush clock, host-wide).
 *
 * The clock ticks once at the start of every flush the engine asks for. When a mapping of
 * a frame is removed, the frame is stamped with the clock's value; a flush that started
 * later (clock value above the stamp) has removed every translation of the frame that a
 * vCPU could have cached. `flushed_upto` is the start time of the newest completed flush,
 * so a frame needs a flush exactly when its stamp is at or past it. Before a frame changes
 * type away from writable, or returns to a heap, the engine checks and flushes only when
 * needed: many frames freed together cost one flush.
 *
 * Stamps are the clock's low 32 bits and compared as a wrapping distance: the clock is never more than a
 * few in-flight flushes ahead of flushed_upto, so the comparison cannot err towards "no
 * flush needed"; a stamp older than 2^31 flushes may cost one extra flush.
 *
 * The platform's tlb_flush hook may be called under engine locks; it must not re-enter.
 */
#include "mm-internal.h"

void mv__flush(mv_host_t *h, const struct mv_flush_request *req)
{
    /* The clock counts the flushes too (one atomic operation less per flush). */
    uint64_t n = atomic_fetch_add_explicit(&h->flush_clock, 1, memory_order_acq_rel);
    uint32_t t = (uint32_t)(n + 1);
    if (h->plat->tlb_flush)
        h->plat->tlb_flush(h->plat, req);
    /*
     * flushed_upto moves forward to t with a plain store, no read-modify-write: two flushes
     * finishing together may leave the older start time, which only makes a later check
     * flush once more than needed (never less), and the next flush moves it on.
     */
    uint32_t cur = atomic_load_explicit(&h->flushed_upto, memory_order_relaxed);
    if ((int32_t)(t - cur) > 0)
        atomic_store_explicit(&h->flushed_upto, t, memory_order_release);
}

void mv__flush_stamp(mv_host_t *h, struct mv_frame *f, bool writable)
{
    uint32_t now = (uint32_t)atomic_load_explicit(&h->flush_clock, memory_order_acquire);
    atomic_store_explicit(&f->tlbflush, now, memory_order_release);
    /* Usually set already (a frame mapped and unmapped again and again): skip the RMW. */
    if (writable && !(atomic_load_explicit(&f->flags, memory_order_relaxed) & MV_PGF_WSTAMP))
        atomic_fetch_or_explicit(&f->flags, MV_PGF_WSTAMP, memory_order_relaxed);
}

static bool flush_needed(mv_host_t *h, uint32_t stamp)
{
    if (!stamp)
        return false;
    uint32_t done = atomic_load_explicit(&h->flushed_upto, memory_order_acquire);
    return (int32_t)(stamp - done) >= 0;
}

void mv__flush_if_needed(mv_host_t *h, struct mv_frame *f, bool writable_only)
{
    uint32_t fl = atomic_load_explicit(&f->flags, memory_order_relaxed);
    uint32_t stamp = atomic_load_explicit(&f->tlbflush, memory_order_acquire);
    if (writable_only && !(fl & MV_PGF_WSTAMP))
        return;
    if (!stamp)
        return;
    if (flush_needed(h, stamp)) {
        struct mv_flush_request req = {.domid = MV_DOMID_ALL, .scope = MV_FLUSH_ALL};
        mv__flush(h, &req);
    } else {
        atomic_fetch_add_explicit(&h->flushes_avoided, 1, memory_order_relaxed);
    }
    atomic_fetch_and_explicit(&f->flags, ~MV_PGF_WSTAMP, memory_order_relaxed);
    if (!writable_only)
        atomic_store_explicit(&f->tlbflush, 0, memory_order_relaxed);
}
