/*
 * shadow/walk.c - the guest walker: guest virtual -> guest physical over the guest's own
 * 4-level tables in guest memory, read by gfn through the p2m.
 *
 * The order is the hardware's (Intel SDM vol. 3, 4.5-4.7): each level's entry is read; a
 * not-present entry or one with reserved bits ends the walk with #PF; rights combine
 * across levels (R/W and U/S must be set at every level, XD at any level forbids fetches
 * when EFER.NXE is on) and are checked at the end against the access (CR0.WP, SMEP, SMAP
 * with EFLAGS.AC and implicit supervisor accesses). Only an allowed access sets the
 * accessed bits top-down and the leaf's dirty bit for a write, each with a
 * compare-and-swap on the guest frame, held while it is written; a write to guest memory
 * is marked dirty while log-dirty is on. A table that is not RAM ends the walk like a
 * reserved bit (nothing shadows it).
 */
#include "shadow-internal.h"

bool mv__sh_reserved(uint64_t e, unsigned lv, unsigned pbits, bool nxe, bool gb)
{
    uint64_t m = ((1ull << 52) - 1) & ~((1ull << pbits) - 1);
    if (!nxe)
        m |= X86E_NX;
    if (lv == 3) {
        m |= X86E_PS;
    } else if (lv == 2 && (e & X86E_PS)) {
        if (!gb)
            return true;
        m |= 0x3fffe000ull; /* bits 13-29 of a 1 GiB leaf */
    } else if (lv == 1 && (e & X86E_PS)) {
        m |= 0x1fe000ull; /* bits 13-20 of a 2 MiB leaf */
    }
    return (e & m) != 0;
}

/* The frame a guest table's p2m entry gives, or MV_INVALID_MFN when it is not readable RAM. */
static mv_mfn_t table_frame(const struct mv_p2m_entry *pe)
{
    return p2m_is_ram(pe->type) && (pe->access & MV_P2M_R) ? pe->mfn : MV_INVALID_MFN;
}

static mv_mfn_t table_mfn(mv_domain_t *d, mv_gfn_t gfn)
{
    struct mv_p2m_entry pe;
    return mv_p2m_lookup(d, gfn, &pe) ? MV_INVALID_MFN : table_frame(&pe);
}

int mv__sh_guest_entry(mv_domain_t *d, mv_gfn_t gfn, unsigned idx, uint64_t *e)
{
    mv_mfn_t m = table_mfn(d, gfn);
    if (m == MV_INVALID_MFN)
        return MV_EFAULT;
    *e = sh_read((const uint64_t *)mv__mfn_va(d->h, m) + idx);
    return 0;
}

static uint32_t pfec(bool present, bool rsvd, uint32_t ec, const struct mv_vcpu_state *cs)
{
    uint32_t code = (present || rsvd) ? MV_PFEC_P : 0;
    if (rsvd)
        code |= MV_PFEC_RSVD;
    code |= ec & (MV_PFEC_W | MV_PFEC_U);
    if ((ec & MV_PFEC_ID) && ((cs->efer & MV_EFER_NXE) || (cs->cr4 & MV_CR4_SMEP)))
        code |= MV_PFEC_ID;
    return code;
}

static bool permits(const struct sh_walk *w, uint32_t ec, uint32_t access,
                    const struct mv_vcpu_state *cs)
{
    bool user = (ec & MV_PFEC_U) != 0, write = (ec & MV_PFEC_W) != 0;
    bool fetch = (ec & MV_PFEC_ID) != 0;
    if (user) {
        if (!w->u || (write && !w->w) || (fetch && w->nx))
            return false;
        return true;
    }
    if (fetch)
        return !w->nx && !(w->u && (cs->cr4 & MV_CR4_SMEP));
    if (w->u && (cs->cr4 & MV_CR4_SMAP) &&
        ((access & MV_SHADOW_ACC_IMPLICIT) || !(access & MV_SHADOW_ACC_AC)))
        return false;
    if (write && !w->w && (cs->cr0 & MV_CR0_WP))
        return false;
    return true;
}

/*
 * Set bits in a guest entry as the hardware's locked update does: 0, 1 when the table is
 * read-only to the guest (ram_ro, ram_shared: the write is dropped, the access goes on),
 * MV_EAGAIN when the entry or the p2m changed under us.
 */
static int set_bits(mv_domain_t *d, mv_gfn_t gfn, unsigned idx, uint64_t old, uint64_t bits)
{
    struct mv_p2m_entry pe;
    if (mv_p2m_lookup(d, gfn, &pe) || !p2m_is_ram(pe.type))
        return MV_EAGAIN;
    if (pe.type == MV_P2M_RAM_RO || pe.type == MV_P2M_RAM_SHARED)
        return 1; /* the write is dropped, as for any guest write to such a page */
    struct mv_frame *f = mv__frame(d->h, pe.mfn);
    if (!f || mv__get_page(d, f))
        return MV_EAGAIN;
    _Atomic uint64_t *slot = (_Atomic uint64_t *)mv__mfn_va(d->h, pe.mfn) + idx;
    bool ok = atomic_compare_exchange_strong_explicit(slot, &old, old | bits,
                                                      memory_order_acq_rel, memory_order_acquire);
    mv__put_page(d->h, f);
    if (!ok)
        return MV_EAGAIN;
    return mv__p2m_engine_wrote(d, gfn, 1);
}

/* A walk cache miss: slot c gets gfn's entry, tagged with seq. */
struct sh_wc *mv__sh_wc_fill(mv_vcpu_t *v, struct sh_wc *c, mv_gfn_t gfn, uint64_t seq)
{
    /* An entry filled while a p2m change was in flight carries the number from before it
     * and dies when the change ends (it moves the number). */
    struct mv_p2m_entry e;
    if (mv_p2m_lookup(v->d, gfn, &e))
        e = (struct mv_p2m_entry){.mfn = MV_INVALID_MFN, .type = MV_P2M_INVALID};
    *c = (struct sh_wc){.seq = seq, .gfn = gfn, .mfn = e.mfn, .type = (uint8_t)e.type,
                        .access = (uint8_t)e.access};
    return c;
}

/* The frame of table gfn (MV_INVALID_MFN: not readable RAM), through the walk cache. */
static mv_mfn_t table_mfn_cached(mv_vcpu_t *v, mv_gfn_t gfn, uint64_t seq)
{
    struct mv_p2m_entry pe;
    mv__sh_wc_lookup(v, gfn, seq, &pe);
    return table_frame(&pe);
}

int mv__sh_walk(mv_vcpu_t *v, uint64_t cr3, uint64_t va, uint32_t ec, uint32_t access,
                struct sh_walk *w)
{
    mv_domain_t *d = v->d;
    const struct mv_vcpu_state *cs = &v->state;
    unsigned pbits = d->phys_bits;
    bool nxe = (cs->efer & MV_EFER_NXE) != 0, gb = (cs->flags & MV_VCPUF_GBPAGES) != 0;
    mv_gfn_t table = (cr3 & X86E_ADDR & ((1ull << pbits) - 1)) >> MV_PAGE_SHIFT;
    w->va = va;
    /* The sequence number first: whatever changes the p2m after it moves it, and the
     * caller builds only if it has not moved (and no change is in flight). */
    w->seq = mv__p2m_seq(d);
    w->w = w->u = true;
    w->nx = false;
    for (int l = 0; l < 4; l++)
        w->dropped[l] = 0;
    int lv;
    for (lv = 3;; lv--) {
        unsigned idx = (unsigned)((va >> (12 + 9 * lv)) & 511);
        uint64_t e;
        w->tgfn[lv] = table;
        mv_mfn_t tm = table_mfn_cached(v, table, w->seq);
        w->tmfn[lv] = tm;
        if (tm == MV_INVALID_MFN) {
            w->pfec = pfec(true, true, ec, cs);
            return 1;
        }
        e = sh_read((const uint64_t *)mv__mfn_va(d->h, tm) + idx);
        w->e[lv] = e;
        if (!(e & X86E_P)) {
            w->pfec = pfec(false, false, ec, cs);
            return 1;
        }
        if (mv__sh_reserved(e, (unsigned)lv, pbits, nxe, gb)) {
            w->pfec = pfec(true, true, ec, cs);
            return 1;
        }
        w->w &= (e & X86E_RW) != 0;
        w->u &= (e & X86E_US) != 0;
        w->nx |= nxe && (e & X86E_NX);
        if (lv == 0 || (lv <= 2 && (e & X86E_PS)))
            break;
        table = (e & X86E_ADDR) >> MV_PAGE_SHIFT;
    }
    w->leaf = lv;
    uint64_t span = 1ull << (9 * lv);
    w->gfn = ((w->e[lv] & X86E_ADDR) >> MV_PAGE_SHIFT & ~(span - 1)) |
             ((va >> 12) & (span - 1));
    if (!permits(w, ec, access, cs)) {
        w->pfec = pfec(true, false, ec, cs);
        return 1;
    }
    /* Accessed bits top-down, then dirty on the leaf for a write. */
    for (int l = 3; l >= lv; l--) {
        uint64_t bits = X86E_A;
        if (l == lv && (ec & MV_PFEC_W))
            bits |= X86E_D;
        if ((w->e[l] & bits) == bits)
            continue;
        unsigned idx = (unsigned)((va >> (12 + 9 * l)) & 511);
        int rc = set_bits(d, w->tgfn[l], idx, w->e[l], bits);
        if (rc < 0)
            return rc;
        if (rc == 1) /* a read-only table: the access goes on as if they had been set */
            w->dropped[l] |= bits & ~w->e[l];
        w->e[l] |= bits;
    }
    return 0;
}
