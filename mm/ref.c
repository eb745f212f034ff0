/*
 * mm/ref.c - general references and page types, as Xen keeps them.
 *
 * General count (frame->count): the allocation reference a domain frame carries
 * (MV_PGF_ALLOCATED) plus one per holder: p2m entries, PV entries, pins, in-flight holds.
 * A frame is freed when the count reaches zero, never before; a taker must find the frame
 * owned by its domain and the count above zero (a frame being freed cannot be revived),
 * and re-checks the owner after taking, since a frame can be freed and reallocated between
 * the two reads.
 *
 * Type word (frame->type_info): a type, its count and validated/pinned/partial bits. The
 * type changes only on a 0 -> 1 transition of the count, so a frame is writable or a page
 * table of one level, never both. Page-table types start unvalidated; the taker that set
 * the type validates (MV_PAGE_VALIDATE) while others get MV_EAGAIN. A type change away
 * from writable first flushes any writable translation a vCPU may still hold (flush.c).
 *
 * All updates are compare-and-swap loops on one word; no lock is taken. Overflow is refused
 * before it happens.
 */
#include "mm-internal.h"

static int owner_error(const mv_domain_t *d, uint32_t owner)
{
    if (owner == d->domid)
        return 0;
    return owner <= MV_DOMID_MAX ? MV_EXDEV : MV_EPERM;
}

int mv__get_page(mv_domain_t *d, struct mv_frame *f)
{
    if (mv__domain_dying(d))
        return MV_ESRCH;
    int rc = owner_error(d, mv__frame_owner(f));
    if (rc)
        return rc;
    uint32_t x = atomic_load_explicit(&f->count, memory_order_relaxed);
    do {
        if (!x)
            return MV_EPERM; /* being freed */
        if (x >= MV_REF_MAX)
            return MV_EOVERFLOW;
    } while (!atomic_compare_exchange_weak_explicit(&f->count, &x, x + 1, memory_order_acquire,
                                                    memory_order_relaxed));
    /* Freed and reallocated to someone else in between: give it back. */
    rc = owner_error(d, mv__frame_owner(f));
    if (rc) {
        mv__put_page(d->h, f);
        return rc;
    }
    return 0;
}

/* The last reference is gone: the frame leaves its owner. */
static void release_frame(mv_host_t *h, struct mv_frame *f)
{
    struct mv_heap_node *n = NULL;
    for (uint32_t i = 0; i < h->nr_nodes && !n; i++)
        if ((size_t)(f - h->node[i]->ft) < h->node[i]->nr_frames)
            n = h->node[i];
    MV_ASSERT(n);
    uint32_t owner = mv__frame_owner(f);
    MV_ASSERT(!(atomic_load_explicit(&f->type_info, memory_order_relaxed) & MV_PGT_COUNT_MASK));
    mv_domain_t *d = mv__domain_of_owner(h, owner);
    mv__flush_if_needed(h, f, false);
    atomic_store_explicit(&f->type_info, 0, memory_order_relaxed);
    atomic_fetch_and_explicit(&f->flags, ~(MV_PGF_ALLOCATED | MV_PGF_WSTAMP),
                              memory_order_relaxed);
    atomic_store_explicit(&f->link, MV_INVALID_GFN, memory_order_relaxed);
    atomic_store_explicit(&f->owner, MV_OWNER_PENDING, memory_order_release);
    if (d)
        atomic_fetch_sub_explicit(&d->pages, 1, memory_order_acq_rel);
    mv__heap_free(h, mv__frame_mfn(n, f), 0);
}

void mv__frame_release_block(mv_host_t *h, mv_mfn_t mfn, unsigned order)
{
    struct mv_heap_node *n = mv__mfn_node(h, mfn);
    MV_ASSERT(n && !(mfn & ((1ull << order) - 1)));
    uint64_t len = 1ull << order;
    struct mv_frame *f0 = &n->ft[mfn - n->first_mfn];
    mv_domain_t *d = mv__domain_of_owner(h, mv__frame_owner(f0));
    /* One flush covers the block: the first frame that needs it triggers it. */
    for (uint64_t i = 0; i < len; i++) {
        struct mv_frame *f = f0 + i;
        MV_ASSERT(atomic_load_explicit(&f->count, memory_order_relaxed) == 0);
        mv__flush_if_needed(h, f, false);
        atomic_store_explicit(&f->type_info, 0, memory_order_relaxed);
        atomic_store_explicit(&f->flags, 0, memory_order_relaxed);
        atomic_store_explicit(&f->link, MV_INVALID_GFN, memory_order_relaxed);
        atomic_store_explicit(&f->owner, MV_OWNER_PENDING, memory_order_release);
    }
    atomic_store_explicit(&f0->flags, mv__pgf_head(order), memory_order_relaxed);
    if (d)
        atomic_fetch_sub_explicit(&d->pages, len, memory_order_acq_rel);
    mv__heap_free(h, mfn, order);
}

void mv__frame_release(mv_host_t *h, struct mv_frame *f)
{
    MV_ASSERT(atomic_load_explicit(&f->count, memory_order_relaxed) == 0);
    release_frame(h, f);
}

void mv__put_page(mv_host_t *h, struct mv_frame *f)
{
    mv__flush_stamp(h, f, false);
    uint32_t x = atomic_fetch_sub_explicit(&f->count, 1, memory_order_acq_rel);
    MV_ASSERT(x >= 1);
    if (x == 1)
        release_frame(h, f);
}

int mv__drop_allocation(mv_host_t *h, struct mv_frame *f)
{
    uint32_t fl = atomic_fetch_and_explicit(&f->flags, ~MV_PGF_ALLOCATED, memory_order_acq_rel);
    if (!(fl & MV_PGF_ALLOCATED))
        return MV_EALREADY;
    uint32_t x = atomic_fetch_sub_explicit(&f->count, 1, memory_order_acq_rel);
    MV_ASSERT(x >= 1);
    if (x == 1)
        release_frame(h, f);
    return 0;
}

int mv__get_page_type(mv_host_t *h, struct mv_frame *f, unsigned type)
{
    if (type == MV_PGT_NONE || type > MV_PGT_SHARED)
        return MV_EINVAL;
    uint64_t x = atomic_load_explicit(&f->type_info, memory_order_acquire), nx;
    bool flushed = false;
    for (;;) {
        uint64_t cnt = x & MV_PGT_COUNT_MASK;
        unsigned cur = mv__pgt_type(x);
        if (cnt == MV_PGT_COUNT_MAX)
            return MV_EOVERFLOW;
        if (cnt == 0) {
            if (cur != type) {
                /*
                 * Leaving writable: no vCPU may keep a writable translation. Leaving a
                 * table type: no vCPU may keep a paging-structure entry that walks it.
                 */
                if ((cur == MV_PGT_WRITABLE || mv__pgt_is_table(cur)) && !flushed) {
                    mv__flush_if_needed(h, f, true);
                    flushed = true;
                }
                nx = ((uint64_t)type << MV_PGT_TYPE_SHIFT) | 1;
                if (!mv__pgt_is_table(type))
                    nx |= MV_PGT_VALIDATED;
            } else {
                nx = x + 1;
            }
        } else {
            if (cur != type)
                return MV_EBUSY;
            if (!(x & MV_PGT_VALIDATED))
                return MV_EAGAIN; /* another caller is validating it */
            nx = x + 1;
        }
        if (atomic_compare_exchange_weak_explicit(&f->type_info, &x, nx, memory_order_acq_rel,
                                                  memory_order_acquire))
            break;
    }
    return (nx & MV_PGT_VALIDATED) ? 0 : MV_PAGE_VALIDATE;
}

int mv__page_type_validated(struct mv_frame *f)
{
    uint64_t x = atomic_load_explicit(&f->type_info, memory_order_acquire);
    do {
        if (!(x & MV_PGT_COUNT_MASK) || (x & MV_PGT_VALIDATED) ||
            !mv__pgt_is_table(mv__pgt_type(x)))
            return MV_EINVAL;
    } while (!atomic_compare_exchange_weak_explicit(&f->type_info, &x, x | MV_PGT_VALIDATED,
                                                    memory_order_acq_rel,
                                                    memory_order_acquire));
    return 0;
}

int mv__put_page_type(mv_host_t *h, struct mv_frame *f)
{
    uint64_t x = atomic_load_explicit(&f->type_info, memory_order_acquire), nx;
    do {
        if (!(x & MV_PGT_COUNT_MASK))
            return MV_ENOENT;
        nx = x - 1;
        /* The last reference of a table type: it must be validated again next time. */
        if (!(nx & MV_PGT_COUNT_MASK) && mv__pgt_is_table(mv__pgt_type(x)))
            nx &= ~(MV_PGT_VALIDATED | MV_PGT_PARTIAL | MV_PGT_MOD_MASK);
    } while (!atomic_compare_exchange_weak_explicit(&f->type_info, &x, nx, memory_order_acq_rel,
                                                    memory_order_acquire));
    /* A writable use, or the last table use, may live on in TLBs until the next flush. */
    if (mv__pgt_type(x) == MV_PGT_WRITABLE ||
        (!(nx & MV_PGT_COUNT_MASK) && mv__pgt_is_table(mv__pgt_type(x))))
        mv__flush_stamp(h, f, true);
    return 0;
}

/* ---- Public wrappers ------------------------------------------------------------------- */

static int frame_of(mv_domain_t *d, mv_mfn_t mfn, struct mv_frame **f)
{
    if (!d)
        return MV_EINVAL;
    *f = mv__frame(d->h, mfn);
    return *f ? 0 : MV_ERANGE;
}

MV_API int mv_page_get(mv_domain_t *d, mv_mfn_t mfn)
{
    struct mv_frame *f;
    int rc = frame_of(d, mfn, &f);
    return rc ? rc : mv__get_page(d, f);
}

MV_API int mv_page_put(mv_domain_t *d, mv_mfn_t mfn)
{
    struct mv_frame *f;
    int rc = frame_of(d, mfn, &f);
    if (rc)
        return rc;
    if ((rc = owner_error(d, mv__frame_owner(f))))
        return rc;
    /*
     * References are anonymous counts (as in Xen): any general reference beyond the
     * allocation's can be dropped here. Whether the caller really held one is the caller's
     * word; the audit's recount catches a count that no holder accounts for.
     */
    uint32_t x = atomic_load_explicit(&f->count, memory_order_relaxed);
    for (;;) {
        uint32_t fl = atomic_load_explicit(&f->flags, memory_order_acquire);
        uint32_t floor = (fl & MV_PGF_ALLOCATED) ? 1 : 0;
        if (x <= floor)
            return MV_ENOENT;
        if (x == 1) {
            mv__put_page(d->h, f); /* the last reference: frees the frame */
            return 0;
        }
        if (atomic_compare_exchange_weak_explicit(&f->count, &x, x - 1, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            mv__flush_stamp(d->h, f, false);
            return 0;
        }
    }
}

MV_API int mv_page_get_typed(mv_domain_t *d, mv_mfn_t mfn, unsigned type)
{
    struct mv_frame *f;
    int rc = frame_of(d, mfn, &f);
    if (rc || (rc = mv__get_page(d, f)))
        return rc;
    rc = mv__get_page_type(d->h, f, type);
    if (rc < 0)
        mv__put_page(d->h, f);
    return rc;
}

MV_API int mv_page_validated(mv_domain_t *d, mv_mfn_t mfn)
{
    struct mv_frame *f;
    int rc = frame_of(d, mfn, &f);
    if (rc || (rc = owner_error(d, mv__frame_owner(f))))
        return rc;
    return mv__page_type_validated(f);
}

MV_API int mv_page_put_typed(mv_domain_t *d, mv_mfn_t mfn)
{
    struct mv_frame *f;
    int rc = frame_of(d, mfn, &f);
    if (rc || (rc = owner_error(d, mv__frame_owner(f))))
        return rc;
    if ((rc = mv__put_page_type(d->h, f)))
        return rc;
    mv__put_page(d->h, f);
    return 0;
}

MV_API int mv_page_info(const mv_host_t *h, mv_mfn_t mfn, struct mv_page_info *info)
{
    if (!h || !info || info->size < sizeof(*info))
        return MV_EINVAL;
    struct mv_heap_node *n = mv__mfn_node(h, mfn);
    if (!n)
        return MV_ERANGE;
    mv__prepare_out(info, sizeof(*info));
    struct mv_frame *f = &n->ft[mfn - n->first_mfn];
    uint32_t owner = mv__frame_owner(f);
    uint64_t t = atomic_load_explicit(&f->type_info, memory_order_relaxed);
    uint32_t fl = atomic_load_explicit(&f->flags, memory_order_relaxed);
    info->owner = owner <= MV_DOMID_MAX ? owner : UINT32_MAX;
    info->refs = atomic_load_explicit(&f->count, memory_order_relaxed);
    info->type = mv__pgt_type(t);
    info->type_refs = (uint32_t)(t & MV_PGT_COUNT_MASK);
    info->flags = ((fl & MV_PGF_ALLOCATED) ? MV_PAGEF_ALLOCATED : 0) |
                  ((t & MV_PGT_VALIDATED) ? MV_PAGEF_VALIDATED : 0) |
                  ((t & MV_PGT_PINNED) ? MV_PAGEF_PINNED : 0) |
                  ((t & MV_PGT_PARTIAL) ? MV_PAGEF_PARTIAL : 0);
    info->node = n->id;
    info->gfn = owner <= MV_DOMID_MAX ? atomic_load_explicit(&f->link, memory_order_relaxed)
                                      : MV_INVALID_GFN;
    return 0;
}
