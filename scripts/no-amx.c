// LD_PRELOAD shim for llama.cpp: refuses the AMX tile permission request
// (arch_prctl ARCH_REQ_XCOMP_PERM), so ggml-cpu does not use its AMX
// buffer type and multiplies with its AVX-512 / repacked kernels instead,
// the ones strata's CPU backend reproduces (docs/numerics.md). Some VMs
// grant the request yet fault on the first tile instruction (SIGILL in
// tinygemm_kernel_amx). Built and used by scripts/record-reference.py.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>

#define ARCH_REQ_XCOMP_PERM 0x1023

long syscall(long number, ...) {
    va_list ap;
    long a[6];
    va_start(ap, number);
    for (int i = 0; i < 6; i++) {
        a[i] = va_arg(ap, long);
    }
    va_end(ap);
    if (number == SYS_arch_prctl && a[0] == ARCH_REQ_XCOMP_PERM) {
        errno = EPERM;
        return -1;
    }
    static long (*real)(long, ...);
    if (!real) {
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    }
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
