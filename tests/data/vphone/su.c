/* The phone-side `su` client of the virtual phone: like Magisk's, it holds no privilege itself.
 * It hands its argv, working directory and stdin/stdout/stderr (SCM_RIGHTS) to the root daemon
 * over a Unix socket; the daemon decides, runs the command as root with those descriptors, and
 * sends back the exit status, which this client exits with.
 * Built static for the phone's CPU: aarch64-linux-gnu-gcc -static -Os -o su su.c */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define SOCKET_PATH "/.vphone/su.sock"

static void put(char **buf, size_t *len, size_t *cap, const void *data, uint32_t n) {
    while (*len + 4 + n > *cap) {
        *cap = *cap * 2 + 64;
        *buf = realloc(*buf, *cap);
        if (!*buf) { perror("su: realloc"); exit(1); }
    }
    memcpy(*buf + *len, &n, 4);
    memcpy(*buf + *len + 4, data, n);
    *len += 4 + n;
}

int main(int argc, char **argv) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    strncpy(addr.sun_path, SOCKET_PATH, sizeof(addr.sun_path) - 1);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        fprintf(stderr, "su: cannot connect to the root daemon at %s\n", SOCKET_PATH);
        return 1;
    }
    char cwd[4096];
    if (!getcwd(cwd, sizeof(cwd))) strcpy(cwd, "/");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    uint32_t n = (uint32_t)argc;
    put(&buf, &len, &cap, &n, 4);
    for (int i = 0; i < argc; i++) put(&buf, &len, &cap, argv[i], (uint32_t)strlen(argv[i]));
    put(&buf, &len, &cap, cwd, (uint32_t)strlen(cwd));
    uint32_t total = (uint32_t)len;

    int fds[3] = { 0, 1, 2 };
    char cbuf[CMSG_SPACE(sizeof(fds))];
    memset(cbuf, 0, sizeof(cbuf));
    struct iovec iov = { .iov_base = &total, .iov_len = 4 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                          .msg_controllen = sizeof(cbuf) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(c), fds, sizeof(fds));
    if (sendmsg(s, &msg, 0) != 4) { perror("su: sendmsg"); return 1; }
    for (size_t off = 0; off < len;) {
        ssize_t w = write(s, buf + off, len - off);
        if (w <= 0) { perror("su: write"); return 1; }
        off += (size_t)w;
    }
    int32_t status;
    size_t got = 0;
    while (got < 4) {
        ssize_t r = read(s, (char *)&status + got, 4 - got);
        if (r <= 0) { fprintf(stderr, "su: the root daemon went away\n"); return 1; }
        got += (size_t)r;
    }
    return status;
}
