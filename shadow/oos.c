/*
 * shadow/oos.c - out-of-sync L1 shadows, and the heuristics that drop shadows of frames
 * the guest no longer uses as page tables.
 *
 * An L1 the guest writes again and again (a process filling in its mappings, fork copying
 * them) costs a trap and an emulation per entry while it is write-protected. After
 * SH_UNSYNC_WRITES emulated writes it is left writable instead: the vCPU that wrote it
 * records it in its out-of-sync list, with a snapshot of the guest frame, and the guest's
 * later writes to it go straight to memory. The shadow L1 may then lag behind the guest
 * table, as a TLB may lag behind memory, and x86 lets it until the guest invalidates:
 * at every CR3 load and full flush of any vCPU (and before the frame serves as a table of
 * another level, before a walk links it anew, or when a vCPU's list is full) the
 * out-of-sync L1s are brought back in sync; INVLPG drops the one leaf it names, which the
 * next access rebuilds from the guest's entry. Resync first write-protects the frame and flushes every vCPU, so that no write
 * can land behind it, then revalidates exactly the entries that differ from the snapshot.
 * A fault in between reads the guest's current entries and fixes the one it needs.
 * While a resync runs, every out-of-sync frame counts as protected: an entry it
 * revalidates must not make another frame about to be resynced writable again.
 * Invariants: an out-of-sync frame has an L1 shadow and no shadow of another level; the
 * audit checks an out-of-sync L1 against the guest only once it is back in sync (I12).
 *
 * Heuristics (Xen's "unshadow on repeated writes" and "the guest emptied it"): a frame
 * written SH_UNSHADOW_WRITES times while no walk used any of its shadows is taken to be a
 * page table no longer, and an emulated write or a resync that leaves a guest table with
 * no present entry (munmap, exit) drops it; either way its shadows go and are rebuilt if
 * the guest walks it again. A root cannot go while a vCPU runs on it: an L4 whose lower
 * (user) half the guest emptied is marked, and dropped when its vCPUs load another CR3
 * (a process that exited); a guest whose kernel lives low only loses a warm root.
 */
#include <string.h>

#include "shadow-internal.h"

bool mv__sh_gfn_protected(struct sh_domain *s, mv_gfn_t gfn)
{
    uint32_t tab[SH_NR_TYPES];
    if (!mv__sh_tables_of(s, gfn, tab))
        return false;
    if (tab[SH_L1] != SH_NIL && s->pages[tab[SH_L1]].oos)
        return s->resyncing; /* an out-of-sync frame has no other table shadow */
    return true;
}

bool mv__sh_guest_empty(const uint64_t *guest)
{
    for (unsigned i = 0; i < SH_ENTRIES; i++)
        if (sh_read(&guest[i]) & X86E_P)
            return false;
    return true;
}

/* The vCPU list that holds pi, and its position there. */
static struct sh_vcpu *holder(struct sh_domain *s, uint32_t pi, unsigned *k)
{
    struct sh_vcpu *sv = shv_of(s->d->vcpu[s->pages[pi].oos - 1]);
    for (*k = 0; *k < sv->noos && sv->oos[*k] != pi; (*k)++)
        ;
    MV_ASSERT(*k < sv->noos);
    return sv;
}

static uint64_t *snap_at(struct sh_vcpu *sv, unsigned k)
{
    return sv->snap + (size_t)sv->slot[k] * SH_ENTRIES;
}

uint64_t *mv__sh_snapshot(struct sh_domain *s, uint32_t pi)
{
    unsigned k;
    struct sh_vcpu *sv = holder(s, pi, &k);
    return snap_at(sv, k);
}

/* Take pi off its list (the snapshot slot moves to the free end). */
static void list_remove(struct sh_domain *s, uint32_t pi)
{
    unsigned k;
    struct sh_vcpu *sv = holder(s, pi, &k);
    uint8_t slot = sv->slot[k];
    for (; k + 1 < sv->noos; k++) {
        sv->oos[k] = sv->oos[k + 1];
        sv->slot[k] = sv->slot[k + 1];
    }
    sv->noos--;
    sv->slot[sv->noos] = slot;
    s->pages[pi].oos = 0;
    s->noos--;
}

void mv__sh_oos_forget(struct sh_domain *s, uint32_t pi)
{
    if (s->pages[pi].oos)
        list_remove(s, pi);
}

/*
 * Revalidate the entries of out-of-sync pi that differ from its snapshot (lock held, the
 * frame write-protected and every vCPU flushed since). The count of entries that changed.
 */
static unsigned sync_entries(struct sh_domain *s, uint32_t pi, bool nxe, bool gb, bool *empty)
{
    *empty = false;
    struct sh_page *sp = &s->pages[pi];
    const uint64_t *snap = mv__sh_snapshot(s, pi);
    struct mv_p2m_entry pe;
    if (mv_p2m_lookup(s->d, sp->gfn, &pe) || !p2m_is_ram(pe.type) || pe.mfn != sp->gmfn) {
        /* The frame left the gfn: the listener drops this shadow; empty it meanwhile. */
        uint64_t *t = sh_table(s, sp);
        for (unsigned i = 0; i < SH_ENTRIES; i++)
            if (t[i])
                mv__sh_set(s, pi, i, 0, 0);
        return 0;
    }
    const uint64_t *guest = (const uint64_t *)mv__mfn_va(s->d->h, pe.mfn);
    uint64_t *st = sh_table(s, sp);
    unsigned fixed = 0;
    uint64_t any = 0; /* the guest table's present bits, ORed: it may have emptied it */
    for (unsigned i = 0; i < SH_ENTRIES; i++) {
        uint64_t g = sh_read(&guest[i]);
        any |= g;
        if (g == snap[i])
            continue;
        fixed++;
        uint64_t key, ne = mv__sh_propagate(s, 0, g, nxe, gb, &key);
        if (ne != st[i])
            mv__sh_set(s, pi, i, ne, key);
    }
    *empty = !(any & X86E_P);
    return fixed;
}

/* Back in sync (lock held, after sync_entries): off the list; dropped if the guest
 * emptied it (empty: what sync_entries found). */
static void settle(struct sh_domain *s, uint32_t pi, unsigned fixed, bool empty, bool may_drop,
                   bool *dropped)
{
    struct sh_page *sp = &s->pages[pi];
    list_remove(s, pi);
    sp->writes = 0;
    s->resyncs++;
    s->resync_fixed += fixed;
    if (may_drop && empty) {
        mv__sh_unshadow(s, pi); /* the guest emptied it: freed, most likely */
        s->unshadowed_freed++;
        *dropped = true;
    }
}

/*
 * Resync the pages pis[0..n) (lock held, all out of sync): write-protect them all, one
 * flush, then revalidate each. may_drop: an L1 the guest emptied goes (else it stays: the
 * caller holds an index to it).
 */
static void resync_set(struct sh_domain *s, const uint32_t *pis, unsigned n, bool nxe, bool gb,
                       bool may_drop)
{
    if (!n)
        return;
    for (unsigned k = 0; k < n; k++)
        mv__sh_write_protect(s, s->pages[pis[k]].gfn);
    mv__sh_flush_all(s); /* no vCPU still holds a writable translation of those frames */
    bool dropped = false, was = s->resyncing;
    s->resyncing = true;
    const uint32_t emptied = 1u << 31; /* in set_fixed[k]: the guest table was empty */
    for (unsigned k = 0; k < n; k++) {
        bool e;
        s->set_fixed[k] = sync_entries(s, pis[k], nxe, gb, &e) | (e ? emptied : 0);
    }
    s->resyncing = was;
    for (unsigned k = 0; k < n; k++)
        settle(s, pis[k], s->set_fixed[k] & ~emptied, (s->set_fixed[k] & emptied) != 0,
               may_drop, &dropped);
    if (dropped)
        mv__sh_flush_all(s); /* before the dropped shadows' frames serve again (I13) */
}

/* Every out-of-sync page for which keep(s, pi, arg) holds, into pis; the count. */
static unsigned collect(struct sh_domain *s, uint32_t *pis,
                        bool (*keep)(struct sh_domain *, uint32_t, uint32_t), uint32_t arg)
{
    unsigned n = 0;
    mv_domain_t *d = s->d;
    for (uint32_t i = 0; i < d->nr_vcpus; i++) {
        struct sh_vcpu *sv = shv_of(d->vcpu[i]);
        for (unsigned k = 0; k < sv->noos; k++)
            if (keep(s, sv->oos[k], arg))
                pis[n++] = sv->oos[k];
    }
    return n;
}

/*
 * Does a walk from `top` reach `pi`? Searched upward from pi through the parent lists
 * (the entries that point at each shadow), each page visited once. A search that would
 * visit more than SH_REACH_BUDGET pages (a guest sharing tables widely) answers yes:
 * resyncing more than needed is always allowed.
 */
#define SH_REACH_BUDGET 64u

static bool reaches_up(struct sh_domain *s, uint32_t pi, uint32_t top, unsigned *budget)
{
    if (pi == top)
        return true;
    if (s->pages[pi].mark == s->mark_gen)
        return false;
    s->pages[pi].mark = s->mark_gen;
    if (!(*budget)--)
        return true;
    for (uint32_t r = s->pages[pi].up; r != SH_NIL; r = s->pages[r >> 9].nodes[r & 511].next)
        if (reaches_up(s, r >> 9, top, budget))
            return true;
    return false;
}

static bool below(struct sh_domain *s, uint32_t pi, uint32_t top)
{
    unsigned budget = SH_REACH_BUDGET;
    if (++s->mark_gen == 0) { /* wrapped: no page may keep a stale mark */
        for (uint32_t k = 0; k < s->cap; k++)
            s->pages[k].mark = 0;
        s->mark_gen = 1;
    }
    return reaches_up(s, pi, top, &budget);
}

void mv__sh_resync_below(struct sh_domain *s, uint32_t top, bool nxe, bool gb, bool may_drop)
{
    mv__assert_held(&s->lock);
    if (!s->noos)
        return;
    resync_set(s, s->set, collect(s, s->set, below, top), nxe, gb, may_drop);
}

void mv__sh_resync_one(struct sh_domain *s, uint32_t pi, bool nxe, bool gb, bool may_drop)
{
    mv__assert_held(&s->lock);
    if (s->pages[pi].oos)
        resync_set(s, &pi, 1, nxe, gb, may_drop);
}

/* Drop every shadow of gfn that no vCPU holds as a root (lock held). */
static bool unshadow_gfn(struct sh_domain *s, mv_gfn_t gfn)
{
    bool any = false;
    for (unsigned t = SH_L1; t <= SH_L4; t++) {
        uint32_t pi = mv__sh_lookup(s, gfn, t);
        if (pi != SH_NIL && !s->pages[pi].pins) {
            mv__sh_unshadow(s, pi);
            any = true;
        }
    }
    if (any)
        mv__sh_flush_all(s);
    return any;
}

bool mv__sh_bulk_write(struct sh_domain *s, mv_gfn_t gfn, uint32_t tab[SH_NR_TYPES])
{
    mv__assert_held(&s->lock);
    if (unshadow_gfn(s, gfn))
        s->unshadowed_early++;
    return mv__sh_tables_of(s, gfn, tab);
}

void mv__sh_after_write(struct sh_domain *s, struct sh_vcpu *sv, mv_gfn_t gfn,
                        const uint32_t tab[SH_NR_TYPES], const uint64_t *guest, bool cleared)
{
    mv__assert_held(&s->lock);
    uint32_t l1 = tab[SH_L1], l4 = tab[SH_L4];
    bool other = false, idle = false;
    for (unsigned t = SH_L1; t <= SH_L4; t++) {
        if (tab[t] == SH_NIL)
            continue;
        struct sh_page *sp = &s->pages[tab[t]];
        if (sp->writes < UINT16_MAX)
            sp->writes++;
        if (sp->idle_writes < UINT16_MAX)
            sp->idle_writes++;
        idle |= sp->idle_writes >= SH_UNSHADOW_WRITES;
        other |= t != SH_L1;
    }
    if (cleared && mv__sh_guest_empty(guest)) {
        if (unshadow_gfn(s, gfn))
            s->unshadowed_freed++;
        return;
    }
    if (cleared && l4 != SH_NIL) {
        bool user = false;
        for (unsigned i = 0; i < SH_ENTRIES / 2 && !user; i++)
            user = (sh_read(&guest[i]) & X86E_P) != 0;
        s->pages[l4].dead_root = !user;
    }
    if (idle) {
        if (unshadow_gfn(s, gfn))
            s->unshadowed_early++;
        return;
    }
    if (!s->oos_budget || l1 == SH_NIL || other || s->pages[l1].oos ||
        s->pages[l1].writes < SH_UNSYNC_WRITES)
        return;
    uint32_t vid = sv->v->id;
    if (sv->noos == s->oos_budget)
        mv__sh_resync_one(s, sv->oos[0], mv__sh_nxe(sv->v), mv__sh_gb(sv->v), true);
    if (mv__sh_lookup(s, gfn, SH_L1) != l1)
        return; /* the resync dropped it */
    unsigned k = sv->noos++;
    sv->oos[k] = l1;
    uint64_t *snap = snap_at(sv, k);
    for (unsigned i = 0; i < SH_ENTRIES; i++)
        snap[i] = sh_read(&guest[i]);
    s->pages[l1].oos = (uint16_t)(vid + 1);
    s->noos++;
    s->unsyncs++;
}
