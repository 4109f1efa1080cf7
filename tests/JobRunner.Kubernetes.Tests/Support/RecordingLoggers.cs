using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace JobRunner.Kubernetes.Tests.Support;

/// <summary>A logger factory whose loggers keep every entry (level, event id, exception, message), for tests that assert what was logged.</summary>
internal sealed class RecordingLoggers : ILoggerFactory, ILogger
{
    public ConcurrentQueue<(LogLevel Level, EventId Id, Exception? Exception, string Message)> Entries { get; } = new();

    public ILogger CreateLogger(string categoryName) => this;

    public void AddProvider(ILoggerProvider provider)
    {
    }

    public void Dispose()
    {
    }

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        => Entries.Enqueue((logLevel, eventId, exception, formatter(state, exception)));
}
