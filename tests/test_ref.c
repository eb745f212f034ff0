/*
 * tests/test_ref.c - general references, page types and the flush clock.
 *
 * The type rules as a table: from each starting state (a type, its count, validated or
 * not), every requested type is allowed or refused as Xen's get_page_type decides, with
 * the exact error and the state after. Then references, overflows and the flush clock.
 */
#include <string.h>

#include "harness.h"
#include "mm-internal.h"

static mv_host_t *h;
static struct th_platform *tp;
static mv_domain_t *d, *other;

static int setup(void **state)
{
    (void)state;
    h = th_host_create(32 * TH_MiB, NULL, &tp);
    struct mv_domain_config c = {.size = sizeof(c), .domid = 1, .type = MV_DOMAIN_PV,
                                 .paging = MV_PAGING_PV, .nr_vcpus = 1, .max_pages = 4096,
                                 .node_affinity = MV_NODE_ANY};
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    c.domid = 2;
    assert_int_equal(mv_domain_create(h, &c, &other), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    while (mv_domain_destroy(d) == MV_EAGAIN)
        ;
    while (mv_domain_destroy(other) == MV_EAGAIN)
        ;
    th_host_destroy(h, tp);
    return 0;
}

static mv_mfn_t fresh_frame(void)
{
    mv_mfn_t m;
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &m), 0);
    return m;
}

static void info(mv_mfn_t m, struct mv_page_info *pi)
{
    memset(pi, 0, sizeof(*pi));
    pi->size = sizeof(*pi);
    assert_int_equal(mv_page_info(h, m, pi), 0);
}

/* Bring a fresh frame to (type, count, validated); count 0 means "had it, dropped it". */
static void prepare(mv_mfn_t m, unsigned type, unsigned count, bool validated)
{
    if (type == MV_PGT_NONE)
        return;
    unsigned takes = count ? count : 1;
    for (unsigned i = 0; i < takes; i++) {
        int rc = mv_page_get_typed(d, m, type);
        if (rc == MV_PAGE_VALIDATE && validated)
            assert_int_equal(mv_page_validated(d, m), 0);
        else
            assert_true(rc == 0 || rc == MV_PAGE_VALIDATE);
    }
    if (!count)
        assert_int_equal(mv_page_put_typed(d, m), 0);
}

static void unwind(mv_mfn_t m)
{
    struct mv_page_info pi;
    info(m, &pi);
    for (uint32_t i = 0; i < pi.type_refs; i++)
        assert_int_equal(mv_page_put_typed(d, m), 0);
    assert_int_equal(mv_domain_free_frames(d, m, 0), 0);
}

struct type_case {
    unsigned from;
    unsigned count;
    bool validated;
    unsigned want;
    int rc;
    unsigned type_after;
    unsigned count_after;
};

#define W MV_PGT_WRITABLE
#define S MV_PGT_SHARED
#define L1 MV_PGT_L1
#define L2 MV_PGT_L2
#define L3 MV_PGT_L3
#define L4 MV_PGT_L4
#define V MV_PAGE_VALIDATE

static const struct type_case cases[] = {
    /* A frame never typed: any type may be set; tables must be validated. */
    {MV_PGT_NONE, 0, false, W, 0, W, 1},
    {MV_PGT_NONE, 0, false, S, 0, S, 1},
    {MV_PGT_NONE, 0, false, L1, V, L1, 1},
    {MV_PGT_NONE, 0, false, L4, V, L4, 1},
    {MV_PGT_NONE, 0, false, MV_PGT_NONE, MV_EINVAL, MV_PGT_NONE, 0},
    {MV_PGT_NONE, 0, false, 9, MV_EINVAL, MV_PGT_NONE, 0},
    /* In use as writable: more writable refs, nothing else (writable and tables exclude). */
    {W, 1, true, W, 0, W, 2},
    {W, 1, true, L1, MV_EBUSY, W, 1},
    {W, 1, true, L2, MV_EBUSY, W, 1},
    {W, 1, true, L3, MV_EBUSY, W, 1},
    {W, 1, true, L4, MV_EBUSY, W, 1},
    {W, 1, true, S, MV_EBUSY, W, 1},
    /* In use as a validated table: the same level only. */
    {L1, 1, true, L1, 0, L1, 2},
    {L1, 1, true, W, MV_EBUSY, L1, 1},
    {L1, 1, true, L2, MV_EBUSY, L1, 1},
    {L3, 2, true, L3, 0, L3, 3},
    {L3, 2, true, L4, MV_EBUSY, L3, 2},
    /* A table someone is still validating: wait. */
    {L1, 1, false, L1, MV_EAGAIN, L1, 1},
    {L2, 1, false, W, MV_EBUSY, L2, 1},
    /* Shared frames cannot be written or used as tables. */
    {S, 1, true, W, MV_EBUSY, S, 1},
    {S, 1, true, L1, MV_EBUSY, S, 1},
    {S, 1, true, S, 0, S, 2},
    /* Count zero: the type may change; a table comes back unvalidated. */
    {W, 0, true, L1, V, L1, 1},
    {W, 0, true, W, 0, W, 1},
    {L1, 0, true, L1, V, L1, 1},
    {L1, 0, true, L2, V, L2, 1},
    {L4, 0, true, W, 0, W, 1},
    {S, 0, true, W, 0, W, 1},
};

static void test_type_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct type_case *c = &cases[i];
        mv_mfn_t m = fresh_frame();
        prepare(m, c->from, c->count, c->validated);
        struct mv_page_info before;
        info(m, &before);
        int rc = mv_page_get_typed(d, m, c->want);
        if (rc != c->rc)
            fail_msg("case %zu: from %u/%u want %u: rc %s, expected %s", i, c->from, c->count,
                     c->want, mv_strerror_name(rc), mv_strerror_name(c->rc));
        struct mv_page_info after;
        info(m, &after);
        if (c->count_after || c->type_after)
            assert_int_equal(after.type, c->type_after);
        assert_int_equal(after.type_refs, c->count_after);
        /* A refused request changed nothing, general references included. */
        if (rc < 0)
            assert_memory_equal(&before, &after, sizeof(before));
        else
            assert_int_equal(after.refs, before.refs + 1);
        if (rc == MV_PAGE_VALIDATE) {
            assert_false(after.flags & MV_PAGEF_VALIDATED);
            assert_int_equal(mv_page_validated(d, m), 0);
            info(m, &after);
            assert_true(after.flags & MV_PAGEF_VALIDATED);
        }
        if (c->count && !c->validated)
            assert_int_equal(mv_page_validated(d, m), 0); /* finish the other's validation */
        unwind(m);
        th_assert_audit_clean(h);
    }
}

static void test_reference_errors(void **state)
{
    (void)state;
    mv_mfn_t m = fresh_frame(), theirs, anon;
    assert_int_equal(mv_domain_alloc_frames(other, 0, MV_NODE_ANY, 0, &theirs), 0);
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, &anon), 0);
    assert_int_equal(mv_page_get(d, 1ull << 40), MV_ERANGE);
    assert_int_equal(mv_page_get(d, theirs), MV_EXDEV);
    assert_int_equal(mv_page_get(d, anon), MV_EPERM);
    mv_mfn_t free_frame = anon + 1;
    struct mv_page_info pi;
    info(free_frame, &pi);
    if (pi.owner == UINT32_MAX && pi.refs == 0)
        assert_int_equal(mv_page_get(d, free_frame), MV_EPERM);
    /* Dropping what is not held. */
    assert_int_equal(mv_page_put(d, m), MV_ENOENT);       /* only the allocation's */
    assert_int_equal(mv_page_put_typed(d, m), MV_ENOENT); /* no typed reference */
    assert_int_equal(mv_page_put(d, theirs), MV_EXDEV);
    assert_int_equal(mv_page_validated(d, m), MV_EINVAL);
    assert_int_equal(mv_page_get_typed(d, m, W), 0);
    assert_int_equal(mv_page_validated(d, m), MV_EINVAL); /* writable needs none */
    assert_int_equal(mv_page_put_typed(d, m), 0);
    info(m, &pi);
    assert_int_equal(pi.refs, 1);
    assert_int_equal(pi.type_refs, 0);
    assert_int_equal(mv_frame_free(h, anon, 0), 0);
    assert_int_equal(mv_domain_free_frames(other, theirs, 0), 0);
    assert_int_equal(mv_domain_free_frames(d, m, 0), 0);
    th_assert_audit_clean(h);
}

static void test_overflow_refused(void **state)
{
    (void)state;
    mv_mfn_t m = fresh_frame();
    struct mv_frame *f = mv__frame(h, m);
    atomic_store(&f->count, MV_REF_MAX);
    assert_int_equal(mv_page_get(d, m), MV_EOVERFLOW);
    assert_int_equal(mv_page_get_typed(d, m, W), MV_EOVERFLOW);
    assert_int_equal(atomic_load(&f->count), MV_REF_MAX);
    atomic_store(&f->count, 2);
    atomic_store(&f->type_info,
                 ((uint64_t)W << MV_PGT_TYPE_SHIFT) | MV_PGT_VALIDATED | MV_PGT_COUNT_MAX);
    assert_int_equal(mv_page_get_typed(d, m, W), MV_EOVERFLOW);
    assert_int_equal(atomic_load(&f->count), 2); /* the general reference was given back */
    atomic_store(&f->type_info, 0);
    atomic_store(&f->count, 1);
    assert_int_equal(mv_domain_free_frames(d, m, 0), 0);
    th_assert_audit_clean(h);
}

/* ---- The flush clock ------------------------------------------------------------------ */

static uint64_t flushes(void)
{
    return atomic_load(&tp->flushes);
}

static void test_flush_type_change(void **state)
{
    (void)state;
    mv_mfn_t a = fresh_frame(), b = fresh_frame(), c = fresh_frame();
    /* Writable mapping dropped, then a table: exactly one flush. */
    assert_int_equal(mv_page_get_typed(d, a, W), 0);
    assert_int_equal(mv_page_put_typed(d, a), 0);
    uint64_t f0 = flushes();
    assert_int_equal(mv_page_get_typed(d, a, L1), MV_PAGE_VALIDATE);
    assert_int_equal(flushes(), f0 + 1);
    assert_int_equal(mv_page_validated(d, a), 0);
    /* No writable mapping ever: no flush. */
    assert_int_equal(mv_page_get_typed(d, b, L2), MV_PAGE_VALIDATE);
    assert_int_equal(flushes(), f0 + 1);
    /* Two frames unmapped before one flush: the second change needs none. */
    assert_int_equal(mv_page_get_typed(d, c, W), 0);
    mv_mfn_t e = fresh_frame();
    assert_int_equal(mv_page_get_typed(d, e, W), 0);
    assert_int_equal(mv_page_put_typed(d, c), 0);
    assert_int_equal(mv_page_put_typed(d, e), 0);
    assert_int_equal(mv_page_get_typed(d, c, L1), MV_PAGE_VALIDATE);
    assert_int_equal(flushes(), f0 + 2);
    assert_int_equal(mv_page_get_typed(d, e, L1), MV_PAGE_VALIDATE);
    assert_int_equal(flushes(), f0 + 2);
    struct mv_host_stats st = {.size = sizeof(st)};
    assert_int_equal(mv_host_stats(h, &st), 0);
    assert_true(st.tlb_flushes_avoided >= 1);
    /* Writable again, then writable: no type change, no flush. */
    mv_mfn_t g = fresh_frame();
    assert_int_equal(mv_page_get_typed(d, g, W), 0);
    assert_int_equal(mv_page_put_typed(d, g), 0);
    assert_int_equal(mv_page_get_typed(d, g, W), 0);
    assert_int_equal(flushes(), f0 + 2);
    assert_int_equal(mv_page_put_typed(d, g), 0);
    /* Finish the validations still open, then drop the table references. */
    mv_mfn_t all[] = {a, b, c, e};
    for (unsigned i = 1; i < 4; i++)
        assert_int_equal(mv_page_validated(d, all[i]), 0);
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(mv_page_put_typed(d, all[i]), 0);
    uint64_t f1 = flushes();
    /* Their general references were dropped after the last flush: freeing needs one. */
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(mv_domain_free_frames(d, all[i], 0), 0);
    assert_int_equal(flushes(), f1 + 1);
    assert_int_equal(mv_domain_free_frames(d, g, 0), 0);
    assert_int_equal(flushes(), f1 + 1); /* g's last mapping predates that flush */
    th_assert_audit_clean(h);
}

static void test_flush_on_free(void **state)
{
    (void)state;
    /* Never mapped: freeing flushes nothing. */
    mv_mfn_t a = fresh_frame();
    uint64_t f0 = flushes();
    assert_int_equal(mv_domain_free_frames(d, a, 0), 0);
    assert_int_equal(flushes(), f0);
    /* Mapped (a reference taken and dropped), then freed: one flush. */
    mv_mfn_t b = fresh_frame();
    assert_int_equal(mv_page_get(d, b), 0);
    assert_int_equal(mv_page_put(d, b), 0);
    assert_int_equal(mv_domain_free_frames(d, b, 0), 0);
    assert_int_equal(flushes(), f0 + 1);
    /* Mapped, then a later flush happened for another reason: freeing needs none. */
    mv_mfn_t c = fresh_frame(), w = fresh_frame();
    assert_int_equal(mv_page_get(d, c), 0);
    assert_int_equal(mv_page_put(d, c), 0);
    assert_int_equal(mv_page_get_typed(d, w, W), 0);
    assert_int_equal(mv_page_put_typed(d, w), 0);
    assert_int_equal(mv_page_get_typed(d, w, L1), MV_PAGE_VALIDATE); /* flushes */
    assert_int_equal(flushes(), f0 + 2);
    assert_int_equal(mv_domain_free_frames(d, c, 0), 0);
    assert_int_equal(flushes(), f0 + 2);
    /* The last reference of a held frame frees it, with its flush. */
    mv_mfn_t e = fresh_frame();
    assert_int_equal(mv_page_get(d, e), 0);
    assert_int_equal(mv_domain_free_frames(d, e, 0), 0);
    assert_int_equal(flushes(), f0 + 2);
    assert_int_equal(mv_page_put(d, e), 0);
    assert_int_equal(flushes(), f0 + 3);
    assert_int_equal(mv_page_put_typed(d, w), 0);
    assert_int_equal(mv_domain_free_frames(d, w, 0), 0);
    th_assert_audit_clean(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_reference_errors),
        cmocka_unit_test(test_overflow_refused),
        cmocka_unit_test(test_flush_type_change),
        cmocka_unit_test(test_flush_on_free),
    };
    return cmocka_run_group_tests_name("ref", tests, setup, teardown);
}
