/* Calibration for bench/fanout-cpu.sh: the kernel's cost of delivering
 * pre-encoded WebSocket frames over loopback TCP, with no server logic.
 * A reader process (standing in for HAProxy) epoll-reads N sockets; the
 * writer sends ROUNDS bursts, one burst = FRAMES_PER_WRITE frames written
 * to every socket, GAP_MS apart (0: back to back). Prints the writer's CPU
 * microseconds per frame. Loopback only.
 * Usage: c-write-loop N ROUNDS FRAMES_PER_WRITE GAP_MS [FRAME_BYTES] */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu_us(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: %s N ROUNDS FRAMES_PER_WRITE GAP_MS [FRAME_BYTES]\n", argv[0]); return 2; }
    int n = atoi(argv[1]), rounds = atoi(argv[2]), k = atoi(argv[3]), gap_ms = atoi(argv[4]);
    int size = argc > 5 ? atoi(argv[5]) : 160;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 4096)) { perror("listen"); return 1; }
    socklen_t al = sizeof a;
    getsockname(ls, (void *)&a, &al);
    pid_t reader = fork();
    if (reader == 0) {
        int ep = epoll_create1(0);
        for (int i = 0; i < n; i++) {
            int c = accept(ls, NULL, NULL);
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
        }
        static char buf[65536];
        struct epoll_event evs[256];
        for (;;) {
            int m = epoll_wait(ep, evs, 256, 5000);
            if (m <= 0) return 0;
            for (int i = 0; i < m; i++)
                if (read(evs[i].data.fd, buf, sizeof buf) <= 0) return 0;
        }
    }
    int *fds = malloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fds[i], (void *)&a, sizeof a)) { perror("connect"); return 1; }
        int one = 1;
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char *frames = malloc((size_t)size * k);
    for (int j = 0; j < k; j++) {
        char *f = frames + (size_t)j * size;
        memset(f, 'x', size);
        f[0] = (char)0x81; f[1] = 126; f[2] = (char)((size - 4) >> 8); f[3] = (char)((size - 4) & 0xff);
    }
    usleep(200000);
    double c0 = cpu_us();
    long frames_sent = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < n; i++) {
            if (write(fds[i], frames, (size_t)size * k) < 0) { perror("write"); return 1; }
            frames_sent += k;
        }
        if (gap_ms) usleep(gap_ms * 1000);
    }
    double c1 = cpu_us();
    printf("sockets=%d rounds=%d frames_per_write=%d gap_ms=%d frame_bytes=%d cpu_us_per_frame=%.3f\n",
           n, rounds, k, gap_ms, size, (c1 - c0) / frames_sent);
    for (int i = 0; i < n; i++) close(fds[i]);
    kill(reader, SIGTERM);
    waitpid(reader, NULL, 0);
    return 0;
}
