/*
 * tests/test_p2m_stress.c - the p2m differential test at length (suite "stress", not in the
 * default run): a million seeded operations against the plain model, audited throughout.
 */
#include "harness.h"
#include "p2m_model.h"

static void test_million_steps(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(256 * TH_MiB, NULL, &tp);
    p2m_run_differential(h, 0x5eed0001, 1000000, 50000);
    th_host_destroy(h, tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_million_steps),
    };
    return cmocka_run_group_tests_name("p2m_stress", tests, NULL, NULL);
}
