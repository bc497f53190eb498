/*
 * refproxy: the reference a Layer-4 proxy is measured against (issue 13).
 *
 * The least a proxy that ends TCP on both sides must do, and nothing else:
 * accept, connect to a backend, move bytes both ways, pass each FIN on,
 * close. No balancing state, no affinity table, no timeouts, no limits, no
 * logging, no metrics. It is the ceiling for stickyd on the same machine: a
 * proxy cannot beat the kernel work of two TCP endpoints per connection plus
 * the cheapest user-space loop around it, and this is that loop.
 *
 * Why epoll and read/write (not io_uring, not splice):
 *  - epoll + non-blocking read/write is what the fastest established proxies
 *    (HAProxy, nginx stream) are built on, and the cheapest loop to write
 *    correctly; it sets the bar stickyd's io_uring engines have to clear.
 *  - Measured here for issue 13: a splice(2) variant was no faster than copy
 *    on loopback, and an SK_SKB sockmap proxy was unstable (no backpressure).
 *    An io_uring version would be stickyd's own design again, so it would
 *    measure the design against itself, not against the limit.
 *  - Large buffers (256 KiB a direction by default, -b) make one read(2) and
 *    one write(2) move as much as the socket holds, so bulk costs the fewest
 *    syscalls a copy proxy can.
 *
 * Model: one thread per worker (-w, default 2, as stickyd's --workers), each
 * with its own SO_REUSEPORT listener and its own epoll set, so both cores
 * accept and forward with no shared state, as stickyd's workers do.
 * Every socket is registered once, edge-triggered, for IN|OUT|RDHUP: there
 * is no epoll_ctl(MOD) per operation. A read shorter than the buffer is taken
 * as "drained" (epoll(7)) unless the event also carried RDHUP, so a FIN that
 * came with the last data is still read.
 *
 * Per connection (client c, backend s): accept4 (the client address comes
 * with it), socket, setsockopt(TCP_NODELAY) on s, connect (EINPROGRESS),
 * 2 x epoll_ctl(ADD); per chunk and direction one read and one write; per
 * direction one read returning 0 and one shutdown(SHUT_WR); 2 x close.
 *
 * With several targets the backend is chosen by a hash of the client's IPv4
 * address modulo the target count: no table, and the same client always
 * reaches the same backend, which `stickyctl bench --expect-targets` needs.
 *
 *   refproxy [-w WORKERS] [-b BUFFER_BYTES] LISTEN_IP:PORT TARGET_IP:PORT...
 *
 * IPv4 only. Runs until killed. Build: gcc -O2 -pthread -o refproxy refproxy.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_TARGETS 16
#define MAX_EVENTS 256

static struct sockaddr_in listen_addr;
static struct sockaddr_in targets[MAX_TARGETS];
static int ntargets;
static size_t bufsize = 256 * 1024;

struct conn;

/* What one epoll registration points at: a socket of a connection. */
struct side {
    struct conn *conn;
    int fd;
    int rdhup; /* the peer's FIN was signalled: read until 0 */
};

/* One direction: bytes read from src not yet written to dst. */
struct dir {
    char *buf;
    size_t off, len;
    int eof;  /* src returned 0 */
    int shut; /* FIN passed on to dst */
};

struct conn {
    struct side c, s;
    struct dir up, down; /* up: c -> s, down: s -> c */
    int connected;
    int dead;
    struct conn *next; /* free list, or the list closed this batch */
};

struct worker {
    int ep;
    int lfd;
    struct conn *free; /* reused, so buffers are allocated once per slot */
    struct conn *closed;
};

static void die(const char *what) {
    fprintf(stderr, "refproxy: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int parse_addr(const char *s, struct sockaddr_in *a) {
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
    memcpy(host, s, colon - s);
    host[colon - s] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535) return -1;
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

static struct conn *conn_get(struct worker *w) {
    struct conn *k = w->free;
    if (k) {
        w->free = k->next;
    } else {
        k = calloc(1, sizeof *k);
        if (!k) return NULL;
        k->up.buf = malloc(bufsize);
        k->down.buf = malloc(bufsize);
        if (!k->up.buf || !k->down.buf) {
            free(k->up.buf);
            free(k->down.buf);
            free(k);
            return NULL;
        }
    }
    char *ub = k->up.buf, *db = k->down.buf;
    memset(k, 0, sizeof *k);
    k->up.buf = ub;
    k->down.buf = db;
    k->c.conn = k->s.conn = k;
    return k;
}

/* Closing frees the sockets at once; the struct waits for the end of the
 * batch, since an event for the other socket may still be in it. */
static void conn_close(struct worker *w, struct conn *k) {
    if (k->dead) return;
    k->dead = 1;
    close(k->c.fd);
    close(k->s.fd);
    k->next = w->closed;
    w->closed = k;
}

/* Moves src -> dst until src is drained or dst is full. -1 on an error. */
static int pump(struct dir *d, struct side *src, int dst) {
    for (;;) {
        if (d->off == d->len) {
            if (d->eof) {
                if (!d->shut) {
                    shutdown(dst, SHUT_WR);
                    d->shut = 1;
                }
                return 0;
            }
            ssize_t n = read(src->fd, d->buf, bufsize);
            if (n > 0) {
                d->off = 0;
                d->len = (size_t)n;
            } else if (n == 0) {
                d->eof = 1;
                continue;
            } else if (errno == EAGAIN) {
                return 0;
            } else if (errno != EINTR) {
                return -1;
            }
            if (n <= 0) continue;
        }
        ssize_t m = send(dst, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
        if (m > 0) {
            d->off += (size_t)m;
            /* A short read drained the socket (epoll(7)), unless a FIN is
             * still to be read. */
            if (d->off == d->len && d->len < bufsize && !src->rdhup) return 0;
        } else if (errno == EAGAIN) {
            return 0; /* dst's EPOLLOUT edge resumes this direction */
        } else if (errno != EINTR) {
            return -1;
        }
    }
}

static void on_side(struct worker *w, struct side *sd, uint32_t ev) {
    struct conn *k = sd->conn;
    if (k->dead) return;
    if (ev & EPOLLRDHUP) sd->rdhup = 1;
    if (sd == &k->s && !k->connected) {
        if (ev & (EPOLLERR | EPOLLHUP)) {
            conn_close(w, k);
            return;
        }
        k->connected = 1;
    }
    if (!k->connected) return; /* client bytes wait in its socket */
    if (pump(&k->up, &k->c, k->s.fd) < 0 || pump(&k->down, &k->s, k->c.fd) < 0) {
        conn_close(w, k);
        return;
    }
    if (k->up.shut && k->down.shut) conn_close(w, k);
}

static void on_accept(struct worker *w) {
    for (;;) {
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        int c = accept4(w->lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN: queue drained; EMFILE etc.: the next edge retries */
        }
        uint32_t h = ntohl(peer.sin_addr.s_addr) * 2654435761u;
        const struct sockaddr_in *t = &targets[ntargets > 1 ? (h >> 16) % (uint32_t)ntargets : 0];
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct conn *k = s >= 0 ? conn_get(w) : NULL;
        if (!k) {
            if (s >= 0) close(s);
            close(c);
            continue;
        }
        int one = 1;
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        k->c.fd = c;
        k->s.fd = s;
        if (connect(s, (const struct sockaddr *)t, sizeof *t) == 0) {
            k->connected = 1;
        } else if (errno != EINPROGRESS) {
            close(s);
            close(c);
            k->next = w->free;
            w->free = k;
            continue;
        }
        struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
        e.data.ptr = &k->c;
        int rc = epoll_ctl(w->ep, EPOLL_CTL_ADD, c, &e);
        e.data.ptr = &k->s;
        if (rc < 0 || epoll_ctl(w->ep, EPOLL_CTL_ADD, s, &e) < 0) conn_close(w, k);
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(w->ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) on_accept(w);
            else on_side(w, evs[i].data.ptr, evs[i].events);
        }
        while (w->closed) {
            struct conn *k = w->closed;
            w->closed = k->next;
            k->next = w->free;
            w->free = k;
        }
    }
    return NULL;
}

static void usage(void) {
    fprintf(stderr, "usage: refproxy [-w WORKERS] [-b BUFFER_BYTES] LISTEN_IP:PORT TARGET_IP:PORT...\n"
                    "  (IPv4; up to %d targets, chosen by a hash of the client address)\n",
            MAX_TARGETS);
    exit(2);
}

int main(int argc, char **argv) {
    int workers = 2, opt;
    while ((opt = getopt(argc, argv, "w:b:h")) != -1) {
        switch (opt) {
        case 'w': workers = atoi(optarg); break;
        case 'b': bufsize = (size_t)atol(optarg); break;
        default: usage();
        }
    }
    if (workers < 1 || workers > 64 || bufsize < 4096 || bufsize > (64u << 20)) {
        fprintf(stderr, "refproxy: -w must be 1-64 and -b 4096-67108864\n");
        exit(2);
    }
    if (argc - optind < 2 || argc - optind - 1 > MAX_TARGETS) usage();
    if (parse_addr(argv[optind], &listen_addr) < 0) {
        fprintf(stderr, "refproxy: bad listen address '%s' (want IPv4:port)\n", argv[optind]);
        exit(2);
    }
    for (int i = optind + 1; i < argc; i++) {
        if (parse_addr(argv[i], &targets[ntargets++]) < 0) {
            fprintf(stderr, "refproxy: bad target address '%s' (want IPv4:port)\n", argv[i]);
            exit(2);
        }
    }
    signal(SIGPIPE, SIG_IGN);
    pthread_t tids[64];
    for (int i = 0; i < workers; i++) {
        struct worker *w = calloc(1, sizeof *w);
        if (!w) die("calloc");
        w->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (w->lfd < 0) die("socket");
        int one = 1;
        setsockopt(w->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (setsockopt(w->lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) die("SO_REUSEPORT");
        if (bind(w->lfd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0) die("bind");
        if (listen(w->lfd, 4096) < 0) die("listen");
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->ep < 0) die("epoll_create1");
        struct epoll_event e = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, w->lfd, &e) < 0) die("epoll_ctl listener");
        if (pthread_create(&tids[i], NULL, worker_main, w) != 0) die("pthread_create");
    }
    fprintf(stderr, "refproxy: %d workers, %zu-byte buffers, listening on %s\n", workers, bufsize, argv[optind]);
    pthread_join(tids[0], NULL);
    return 0;
}
