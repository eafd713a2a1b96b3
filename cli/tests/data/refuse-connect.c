/* A one-way firewall for one process: connect() to the TCP port in
 * REFUSE_CONNECT_PORT fails with ECONNREFUSED, as a firewall that lets
 * nothing into that peer would make it; everything else connects as
 * usual, and others still reach this process. Loaded with LD_PRELOAD by
 * cli/tests/link_plan.rs (a loopback test has no firewall of its own). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_connect)(int, const struct sockaddr *, socklen_t);
    if (!real_connect)
        real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    const char *port = getenv("REFUSE_CONNECT_PORT");
    if (port && addr && addr->sa_family == AF_INET
        && ntohs(((const struct sockaddr_in *)addr)->sin_port) == atoi(port)) {
        errno = ECONNREFUSED;
        return -1;
    }
    return real_connect(fd, addr, len);
}
