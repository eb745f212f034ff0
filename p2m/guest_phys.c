/*
 * p2m/guest_phys.c - reading and writing guest-physical memory for emulators and tools.
 *
 * Check everything, then copy: the whole range is looked at page by page before a byte
 * moves, so a hole or an mmio page anywhere refuses the call with nothing written. Each
 * frame is held with a general reference while it is copied, so a concurrent decrease
 * (which needs the p2m's reference to be the only one) cannot free it under the copy
 * (XSA-219 class). Writes go through the write-fault path for log-dirty pages, which marks
 * them; ram_ro and ram_shared pages refuse writes, and so does a frame in use as a page
 * table (MV_EBUSY: a PV guest's tables change only through validated updates). An HVM
 * guest's page tables may be written: the modules are told (phys_wrote), so shadows of
 * them are revalidated like an emulated write's.
 */
#include <string.h>

#include "p2m-internal.h"

static int check_page(mv_domain_t *d, mv_gfn_t gfn, bool write)
{
    struct mv_p2m_entry e;
    int rc = mv_p2m_lookup(d, gfn, &e);
    if (rc)
        return rc == MV_ERANGE ? MV_EFAULT : rc;
    if (e.type == MV_P2M_INVALID || e.type == MV_P2M_MMIO_DIRECT || !p2m_is_ram(e.type))
        return MV_EFAULT;
    if (write && e.type == MV_P2M_RAM_RO)
        return MV_EACCES;
    if (write && e.type == MV_P2M_RAM_SHARED)
        return MV_EOPNOTSUPP;
    /* A frame in use as a (PV) page table changes only through validated updates. */
    struct mv_frame *f = mv__frame(d->h, e.mfn);
    uint64_t t = f ? atomic_load_explicit(&f->type_info, memory_order_acquire) : 0;
    if (write && mv__pgt_is_table(mv__pgt_type(t)) && (t & MV_PGT_COUNT_MASK))
        return MV_EBUSY;
    return 0;
}

static int copy(mv_domain_t *d, mv_paddr_t gpa, void *rbuf, const void *wbuf, size_t len)
{
    bool write = wbuf != NULL;
    if (!d || !p2m_of(d) || (len && !rbuf && !wbuf))
        return MV_EINVAL;
    if (!len)
        return 0;
    if (gpa + len < gpa)
        return MV_EFAULT;
    if (mv__domain_dying(d))
        return MV_ESRCH;
    mv_gfn_t first = gpa >> MV_PAGE_SHIFT, last = (gpa + len - 1) >> MV_PAGE_SHIFT;
    for (mv_gfn_t g = first; g <= last; g++) {
        int rc = check_page(d, g, write);
        if (rc)
            return rc;
    }
    size_t off = 0;
    for (mv_gfn_t g = first; g <= last; g++) {
        size_t in_page = (size_t)((gpa + off) & (MV_PAGE_SIZE - 1));
        size_t n = MV_PAGE_SIZE - in_page < len - off ? MV_PAGE_SIZE - in_page : len - off;
        if (write) {
            int rc = mv_p2m_write_fault(d, g); /* log-dirty: marked, writable */
            if (rc)
                return rc;
        }
        struct mv_p2m_entry e;
        int rc = mv_p2m_lookup(d, g, &e);
        struct mv_frame *f = rc ? NULL : mv__frame(d->h, e.mfn);
        if (!f || !p2m_is_ram(e.type) || mv__get_page(d, f))
            return MV_EFAULT; /* changed under us after the check: stop here */
        uint8_t *va = (uint8_t *)mv_frame_va(d->h, e.mfn) + in_page;
        if (write)
            memcpy(va, (const uint8_t *)wbuf + off, n);
        else
            memcpy((uint8_t *)rbuf + off, va, n);
        mv__put_page(d->h, f);
        /* A peek-and-clean may have run between the fault and the copy: mark again. */
        if (write && (rc = mv__p2m_engine_wrote(d, g, 1)))
            return rc;
        for (unsigned m = 0; write && m < MV_MOD_NR; m++)
            if (d->h->modules[m] && d->h->modules[m]->phys_wrote)
                d->h->modules[m]->phys_wrote(d, g, (unsigned)in_page, n);
        off += n;
    }
    return 0;
}

MV_API int mv_guest_phys_read(mv_domain_t *d, mv_paddr_t gpa, void *buf, size_t len)
{
    return copy(d, gpa, buf, NULL, len);
}

MV_API int mv_guest_phys_write(mv_domain_t *d, mv_paddr_t gpa, const void *buf, size_t len)
{
    if (len && !buf)
        return MV_EINVAL;
    return copy(d, gpa, NULL, buf, len);
}
