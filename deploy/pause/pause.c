/*
 * rustshim pause: the sandbox ("infra") process of a CRI pod.
 *
 * It holds the pod's namespaces open and does nothing else:
 *   - sleeps until a signal arrives (sigsuspend(2): no busy loop, no timers,
 *     and no lost wake-up between checking the flag and going to sleep);
 *   - exits 0 on SIGINT or SIGTERM (CRI StopPodSandbox);
 *   - reaps every child re-parented to it (as PID 1 of a shared pid
 *     namespace it is the reaper of orphaned processes).
 *
 * Build (static, no runtime dependencies, works in an empty rootfs):
 *   gcc -static -Os -s -o pause deploy/pause/pause.c
 * scripts/make-pause.sh builds it and packs it into an OCI image archive.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "rustshim-pause 1.0"

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

static void on_child(int sig)
{
    (void)sig;
    int saved = errno;
    /* signals coalesce: reap everything that is ready, then return */
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    errno = saved;
}

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts(VERSION);
        return 0;
    }
    if (getpid() != 1)
        fputs("pause: warning: not running as PID 1\n", stderr);

    /* block the signals we wait for; sigsuspend() unblocks them atomically */
    sigset_t block, orig;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &block, &orig) < 0) {
        perror("pause: sigprocmask");
        return 1;
    }
    sigdelset(&orig, SIGINT);
    sigdelset(&orig, SIGTERM);
    sigdelset(&orig, SIGCHLD);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) {
        perror("pause: sigaction SIGCHLD");
        return 1;
    }

    while (!stop_signal)
        sigsuspend(&orig);

    fprintf(stderr, "pause: shutting down, got signal %d\n", (int)stop_signal);
    return 0;
}
