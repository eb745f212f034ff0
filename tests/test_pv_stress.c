/*
 * tests/test_pv_stress.c - the long model run (suite stress): 24 seeds, 4.8 million
 * steps in all, a full audit every few thousand steps.
 */
#include "pv_model.h"

static void test_model_long(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 24; seed++)
        pvm_run(0x57e55000ull + seed, 200000, 5000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
