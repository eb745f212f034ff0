/*
 * shadow/audit.c - the shadow module's part of mv_host_audit(): I12, I13 and I14.
 *
 * I12: a present shadow entry has a present guest entry behind it (table shadows), with no
 * more rights than the guest entry; a leaf maps the frame the p2m gives for its gfn, with
 * no more rights than the p2m type, and never writable onto a guest page-table frame
 * unless that frame is tracked out of sync (its L1 is compared with the guest only once
 * back in sync);
 * shadow frames are engine-owned. I13: the pool holds no more frames than its budget,
 * counts agree, every entry points at a live shadow, every vCPU root is live, and free
 * pool frames are zero (referenced by nothing). I14: while log-dirty is on, a leaf that
 * lets the guest write a RAM page maps a gfn whose dirty bit is set (the p2m's bitmap,
 * read as p2m/p2m_audit.c reads it for ram_rw entries), so peek-and-clean misses no write.
 */
#include "shadow-internal.h"

#define BAD(ac, inv, what, mfn, dom, exp, found) \
    mv__audit_report(ac, inv, what, mfn, dom, exp, found)

static void audit_leaf(struct sh_domain *s, struct mv_audit_ctx *ac, const struct sh_page *sp,
                       uint64_t e, mv_gfn_t gfn)
{
    uint32_t dom = s->d->domid;
    struct mv_p2m_entry pe;
    if (mv_p2m_lookup(s->d, gfn, &pe) || pe.type == MV_P2M_INVALID) {
        BAD(ac, "I12", "shadow-leaf-without-p2m", sp->smfn, dom, gfn, e);
        return;
    }
    if (((e & X86E_ADDR) >> MV_PAGE_SHIFT) != pe.mfn)
        BAD(ac, "I12", "shadow-leaf-wrong-frame", sp->smfn, dom, pe.mfn, e);
    if ((e & X86E_RW) && (!(pe.access & MV_P2M_W) ||
                          (pe.type != MV_P2M_RAM_RW && pe.type != MV_P2M_MMIO_DIRECT)))
        BAD(ac, "I12", "shadow-rights-beyond-p2m", sp->smfn, dom, pe.type, e);
    if ((e & X86E_RW) && mv__sh_gfn_protected(s, gfn))
        BAD(ac, "I12", "shadow-writable-page-table", sp->smfn, dom, gfn, e);
    const struct mv_p2m *p = p2m_of(s->d);
    if ((e & X86E_RW) && p2m_is_ram(pe.type) && p->logdirty && !mv__p2m_is_dirty(p, gfn))
        BAD(ac, "I14", "shadow-writable-but-clean", sp->smfn, dom, gfn, e);
}

static void audit_page(struct sh_domain *s, struct mv_audit_ctx *ac, uint32_t pi)
{
    const struct sh_page *sp = &s->pages[pi];
    uint32_t dom = s->d->domid;
    const uint64_t *t = sh_table(s, sp);
    struct mv_frame *f = mv__frame(s->d->h, sp->smfn);
    if (!f || mv__frame_owner(f) != MV_OWNER_INTERNAL)
        BAD(ac, "I12", "shadow-frame-not-internal", sp->smfn, dom, MV_OWNER_INTERNAL,
            f ? mv__frame_owner(f) : 0);
    for (unsigned i = 0; i < SH_ENTRIES; i++) {
        uint64_t e = t[i];
        if (!e)
            continue;
        if (sh_type_leafy(sp->type)) {
            if (sp->nodes[i].key != (sp->type == SH_FL1 ? sp->gfn + i : sp->nodes[i].key))
                BAD(ac, "I12", "shadow-fl1-gfn", sp->smfn, dom, sp->gfn + i, sp->nodes[i].key);
            audit_leaf(s, ac, sp, e, sp->nodes[i].key);
        } else {
            uint64_t k = sp->nodes[i].key;
            if (k >= s->cap || s->pages[k].state != SLOT_USED ||
                s->pages[k].smfn != (e & X86E_ADDR) >> MV_PAGE_SHIFT)
                BAD(ac, "I13", "shadow-entry-to-dead-shadow", sp->smfn, dom, k, e);
        }
        if (!sh_type_is_table(sp->type) || sp->oos)
            continue; /* an out-of-sync L1 is checked against the guest once resynced */
        uint64_t g;
        if (mv__sh_guest_entry(s->d, sp->gfn, i, &g) || !(g & X86E_P)) {
            BAD(ac, "I12", "shadow-present-guest-not", sp->smfn, dom, i, e);
            continue;
        }
        if (((e & X86E_RW) && !(g & X86E_RW)) || ((e & X86E_US) && !(g & X86E_US)))
            BAD(ac, "I12", "shadow-rights-beyond-guest", sp->smfn, dom, g, e);
        if (sp->type == SH_L1 && sp->nodes[i].key != (g & X86E_ADDR) >> MV_PAGE_SHIFT)
            BAD(ac, "I12", "shadow-leaf-gfn", sp->smfn, dom, (g & X86E_ADDR) >> 12,
                sp->nodes[i].key);
    }
}

void mv__sh_audit(mv_host_t *h, struct mv_audit_ctx *ac)
{
    for (uint32_t id = 0; id <= MV_DOMID_MAX; id++) {
        mv_domain_t *d = mv__domain_of_owner(h, id);
        struct sh_domain *s = d ? sh_of(d) : NULL;
        if (!s)
            continue;
        uint64_t mat = 0, by_type[SH_NR_TYPES] = {0};
        for (uint32_t pi = 0; pi < s->cap; pi++) {
            struct sh_page *sp = &s->pages[pi];
            if (sp->smfn == MV_INVALID_MFN)
                continue;
            mat++;
            if (sp->state == SLOT_USED) {
                by_type[sp->type]++;
                audit_page(s, ac, pi);
                continue;
            }
            struct mv_frame *f = mv__frame(h, sp->smfn);
            if (!f || mv__frame_owner(f) != MV_OWNER_TOPUP)
                BAD(ac, "I13", "pool-frame-owner", sp->smfn, id, MV_OWNER_TOPUP,
                    f ? mv__frame_owner(f) : 0);
            const uint64_t *t = sh_table(s, sp);
            for (unsigned i = 0; i < SH_ENTRIES; i++)
                if (t[i]) {
                    BAD(ac, "I13", "free-pool-frame-not-clean", sp->smfn, id, 0, t[i]);
                    break;
                }
        }
        if (mat != s->pool_frames)
            BAD(ac, "I13", "pool-frame-count", MV_INVALID_MFN, id, s->pool_frames, mat);
        if (mat > s->ceiling)
            BAD(ac, "I13", "pool-over-ceiling", MV_INVALID_MFN, id, s->ceiling, mat);
        if (s->budget < s->floor || s->budget > s->ceiling)
            BAD(ac, "I13", "pool-budget-out-of-bounds", MV_INVALID_MFN, id, s->floor, s->budget);
        uint64_t live = 0;
        for (unsigned t = 0; t < SH_NR_TYPES; t++)
            live += by_type[t];
        if (live != s->in_use)
            BAD(ac, "I13", "shadow-live-count", MV_INVALID_MFN, id, s->in_use, live);
        for (unsigned t = 0; t < SH_NR_TYPES; t++)
            if (by_type[t] != s->by_type[t])
                BAD(ac, "I13", "shadow-type-count", MV_INVALID_MFN, id, s->by_type[t], by_type[t]);
        for (uint32_t i = 0; i < d->nr_vcpus; i++) {
            struct sh_vcpu *sv = shv_of(d->vcpu[i]);
            for (unsigned k = 0; sv && k < SH_ROOTS; k++)
                if (sv->roots[k] != SH_NIL && s->pages[sv->roots[k]].state != SLOT_USED)
                    BAD(ac, "I13", "root-not-live", MV_INVALID_MFN, id, sv->roots[k], 0);
        }
    }
}
