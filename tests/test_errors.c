/*
 * tests/test_errors.c - error codes, names, the version and size-tagged structs.
 */
#include <string.h>

#include "harness.h"
#include "mm-internal.h"

static void test_codes_are_linux_numbers(void **state)
{
    (void)state;
    assert_int_equal(MV_EPERM, -1);
    assert_int_equal(MV_ENOENT, -2);
    assert_int_equal(MV_EAGAIN, -11);
    assert_int_equal(MV_ENOMEM, -12);
    assert_int_equal(MV_EBUSY, -16);
    assert_int_equal(MV_EINVAL, -22);
    assert_int_equal(MV_ERANGE, -34);
    assert_int_equal(MV_EUCLEAN, -117);
}

static void test_every_code_named(void **state)
{
    (void)state;
    static const int codes[] = {MV_OK, MV_EPERM, MV_ENOENT, MV_ESRCH, MV_EIO, MV_E2BIG,
                                MV_EAGAIN, MV_ENOMEM, MV_EACCES, MV_EFAULT, MV_EBUSY,
                                MV_EEXIST, MV_EXDEV, MV_ENODEV, MV_EINVAL, MV_ENOSPC,
                                MV_ERANGE, MV_ENOSYS, MV_EOVERFLOW, MV_EOPNOTSUPP,
                                MV_EALREADY, MV_EUCLEAN};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        assert_string_not_equal(mv_strerror(codes[i]), "unknown error code");
        assert_true(strncmp(mv_strerror_name(codes[i]), "MV_", 3) == 0);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(mv_strerror_name(codes[i]), mv_strerror_name(codes[j]));
    }
    assert_string_equal(mv_strerror_name(MV_EINVAL), "MV_EINVAL");
    assert_string_equal(mv_strerror(-4242), "unknown error code");
    assert_string_equal(mv_strerror_name(12), "MV_E?");
}

static void test_version(void **state)
{
    (void)state;
    assert_string_equal(mv_version(), MV_VERSION_STRING);
    assert_int_equal(mv_version_number(), MV_VERSION);
    assert_int_equal(MV_VERSION >> 16, MV_VERSION_MAJOR);
}

struct v2 {
    size_t size;
    uint64_t a;
    uint64_t b;
};

static void test_copy_sized(void **state)
{
    (void)state;
    struct v2 dst;
    struct {
        size_t size;
        uint64_t a;
    } old = {sizeof(old), 7};
    /* An older, shorter struct: the new field reads zero. */
    assert_int_equal(mv__copy_sized(&dst, sizeof(dst), &old, sizeof(old)), 0);
    assert_int_equal(dst.a, 7);
    assert_int_equal(dst.b, 0);
    assert_int_equal(dst.size, sizeof(dst));
    /* Too short for the first version. */
    old.size = sizeof(size_t);
    assert_int_equal(mv__copy_sized(&dst, sizeof(dst), &old, sizeof(old)), MV_EINVAL);
    /* A newer, longer struct: a zero tail is accepted, a non-zero one refused. */
    struct {
        struct v2 base;
        uint64_t extra;
    } newer = {{sizeof(newer), 1, 2}, 0};
    assert_int_equal(mv__copy_sized(&dst, sizeof(dst), &newer, sizeof(old)), 0);
    assert_int_equal(dst.b, 2);
    newer.extra = 5;
    memset(&dst, 0xaa, sizeof(dst));
    assert_int_equal(mv__copy_sized(&dst, sizeof(dst), &newer, sizeof(old)), MV_E2BIG);
    assert_int_equal(mv__copy_sized(&dst, sizeof(dst), NULL, sizeof(old)), MV_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codes_are_linux_numbers),
        cmocka_unit_test(test_every_code_named),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_copy_sized),
    };
    return cmocka_run_group_tests_name("errors", tests, NULL, NULL);
}
