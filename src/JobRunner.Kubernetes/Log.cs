using Microsoft.Extensions.Logging;

namespace JobRunner.Kubernetes;

internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Debug, "The watch of {Kind} in namespace {Namespace} was closed by the server; reconnecting from resourceVersion {ResourceVersion}.")]
    public static partial void WatchClosed(ILogger logger, string kind, string @namespace, string? resourceVersion);

    [LoggerMessage(2, LogLevel.Information, "The watch of {Kind} in namespace {Namespace} expired ({Message}); listing again.")]
    public static partial void WatchExpired(ILogger logger, string kind, string @namespace, string message);

    [LoggerMessage(3, LogLevel.Warning, "The watch of {Kind} in namespace {Namespace} failed; retrying in {Delay}.")]
    public static partial void WatchFailed(ILogger logger, Exception exception, string kind, string @namespace, TimeSpan delay);

    [LoggerMessage(4, LogLevel.Information, "Job {JobId}: created Kubernetes Job {Name}.")]
    public static partial void Created(ILogger logger, JobId jobId, string name);

    [LoggerMessage(5, LogLevel.Information, "Job {JobId}: adopted the existing Kubernetes Job {Name} ({How}).")]
    public static partial void Adopted(ILogger logger, JobId jobId, string name, string how);

    [LoggerMessage(6, LogLevel.Warning, "Job {JobId}: the log stream of pod {Pod} failed.")]
    public static partial void LogStreamFailed(ILogger logger, Exception exception, JobId jobId, string pod);

    [LoggerMessage(7, LogLevel.Warning, "Job {JobId}: could not delete Kubernetes Job {Name}.")]
    public static partial void DeleteFailed(ILogger logger, Exception exception, JobId jobId, string name);

    [LoggerMessage(8, LogLevel.Debug, "Refreshing the exec credential of {Command} failed.")]
    public static partial void ExecFailed(ILogger logger, Exception exception, string command);

    [LoggerMessage(9, LogLevel.Warning, "Job {JobId}: the attempt lost its lease; Kubernetes Job {Name} is left to the job's next owner, which re-attaches to it.")]
    public static partial void LeftForNextOwner(ILogger logger, JobId jobId, string name);

    [LoggerMessage(10, LogLevel.Warning, "Job {JobId}: could not read the log stored by earlier attempts; the log of re-attached Kubernetes Job {Name} is streamed from its start, so lines stored already appear again.")]
    public static partial void StoredLogUnread(ILogger logger, Exception exception, JobId jobId, string name);

    [LoggerMessage(11, LogLevel.Warning, "Job {JobId} is {State}, but its Kubernetes Job {Name} was still running (left by a graceful stop, then the job was finished without it): deleted it.")]
    public static partial void OrphanDeleted(ILogger logger, JobId jobId, string name, JobState state);

    [LoggerMessage(12, LogLevel.Warning, "Looking for Kubernetes Jobs left running for finished jobs failed; looking again at the next interval.")]
    public static partial void SweepFailed(ILogger logger, Exception exception);

    [LoggerMessage(13, LogLevel.Warning, "Job {JobId}: could not write a line to the job's log; the attempt goes on without it.")]
    public static partial void SystemLogFailed(ILogger logger, Exception exception, JobId jobId);

    [LoggerMessage(14, LogLevel.Warning, "Job {JobId}: could not store {Count} output lines of pod {Pod}; they are lost, the stream goes on.")]
    public static partial void LogLinesLost(ILogger logger, Exception exception, JobId jobId, int count, string pod);
}
