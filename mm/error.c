/*
 * mm/error.c - error names, the version, engine-bug stops and size-tagged structs.
 *
 * The MV_E* codes are a closed set with Linux's numbers; every one has a symbolic name
 * and a sentence. Unknown codes are named as such, never NULL.
 */
#include <stdio.h>

#include "mm-internal.h"

struct mv_errname {
    int code;
    const char *name;
    const char *text;
};

static const struct mv_errname errnames[] = {
    {MV_OK, "MV_OK", "success"},
    {MV_EPERM, "MV_EPERM", "operation not permitted for this caller or object"},
    {MV_ENOENT, "MV_ENOENT", "no such entry"},
    {MV_ESRCH, "MV_ESRCH", "no such domain"},
    {MV_EIO, "MV_EIO", "the platform failed the operation"},
    {MV_E2BIG, "MV_E2BIG", "struct larger than this library knows, with non-zero fields"},
    {MV_EAGAIN, "MV_EAGAIN", "preempted: progress kept, call again"},
    {MV_ENOMEM, "MV_ENOMEM", "out of machine memory or metadata"},
    {MV_EACCES, "MV_EACCES", "access rights refuse the operation"},
    {MV_EFAULT, "MV_EFAULT", "bad address"},
    {MV_EBUSY, "MV_EBUSY", "object still in use"},
    {MV_EEXIST, "MV_EEXIST", "already exists"},
    {MV_EXDEV, "MV_EXDEV", "object belongs to another domain"},
    {MV_ENODEV, "MV_ENODEV", "no such NUMA node"},
    {MV_EINVAL, "MV_EINVAL", "invalid argument"},
    {MV_ENOSPC, "MV_ENOSPC", "table full"},
    {MV_ERANGE, "MV_ERANGE", "number out of range"},
    {MV_ENOSYS, "MV_ENOSYS", "not built into this library"},
    {MV_EOVERFLOW, "MV_EOVERFLOW", "a count would overflow"},
    {MV_EOPNOTSUPP, "MV_EOPNOTSUPP", "not supported in this mode"},
    {MV_EALREADY, "MV_EALREADY", "already in that state"},
    {MV_EUCLEAN, "MV_EUCLEAN", "the audit found violations"},
};

static const struct mv_errname *errname(int err)
{
    for (size_t i = 0; i < MV_ARRAY_SIZE(errnames); i++)
        if (errnames[i].code == err)
            return &errnames[i];
    return NULL;
}

MV_API const char *mv_strerror(int err)
{
    const struct mv_errname *e = errname(err);
    return e ? e->text : "unknown error code";
}

MV_API const char *mv_strerror_name(int err)
{
    const struct mv_errname *e = errname(err);
    return e ? e->name : "MV_E?";
}

MV_API const char *mv_version(void)
{
    return MV_VERSION_STRING;
}

MV_API uint32_t mv_version_number(void)
{
    return MV_VERSION;
}

/* Kept for a debugger: what the last engine bug said. */
char mv__bug_message[256];

_Noreturn void mv__bug(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(mv__bug_message, sizeof(mv__bug_message), "%s:%d: ", file, line);
    if (n < 0 || (size_t)n >= sizeof(mv__bug_message))
        n = 0;
    va_start(ap, fmt);
    vsnprintf(mv__bug_message + n, sizeof(mv__bug_message) - (size_t)n, fmt, ap);
    va_end(ap);
    __builtin_trap();
}

int mv__copy_sized(void *dst, size_t dst_size, const void *src, size_t min_size)
{
    size_t src_size;
    if (!src)
        return MV_EINVAL;
    memcpy(&src_size, src, sizeof(src_size));
    if (src_size < min_size)
        return MV_EINVAL;
    if (src_size > dst_size) {
        const unsigned char *tail = (const unsigned char *)src + dst_size;
        for (size_t i = 0; i < src_size - dst_size; i++)
            if (tail[i])
                return MV_E2BIG;
    }
    memset(dst, 0, dst_size);
    memcpy(dst, src, src_size < dst_size ? src_size : dst_size);
    memcpy(dst, &dst_size, sizeof(dst_size));
    return 0;
}

int mv__prepare_out(void *out, size_t ours)
{
    size_t size;
    if (!out)
        return MV_EINVAL;
    memcpy(&size, out, sizeof(size));
    if (size < ours)
        return MV_EINVAL;
    memset((unsigned char *)out + sizeof(size), 0, ours - sizeof(size));
    return 0;
}
