using System.Diagnostics;

namespace JobRunner.Testing;

/// <summary>
/// A <see cref="TimeProvider"/> whose clock moves only when told to. Timers fire, in due order, during
/// <see cref="Advance"/> and <see cref="SetUtcNow"/>, on the calling thread.
/// </summary>
[DebuggerDisplay("{GetUtcNow()}, Timers = {TimerCount}")]
public sealed class FakeTimeProvider : TimeProvider
{
    private readonly Lock _lock = new();
    private readonly List<FakeTimer> _timers = [];
    private DateTimeOffset _now;

    /// <summary>Initializes a new instance that starts at <paramref name="start"/>.</summary>
    /// <param name="start">The start time; 2026-01-01T00:00:00Z when <see langword="null"/>.</param>
    public FakeTimeProvider(DateTimeOffset? start = null)
    {
        _now = start ?? new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
    }

    /// <summary>Gets the number of timers that are armed (due at some time).</summary>
    public int TimerCount
    {
        get
        {
            lock (_lock)
            {
                return _timers.Count(static t => t.Due is not null);
            }
        }
    }

    /// <inheritdoc />
    public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;

    /// <inheritdoc />
    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    /// <inheritdoc />
    public override DateTimeOffset GetUtcNow()
    {
        lock (_lock)
        {
            return _now;
        }
    }

    /// <inheritdoc />
    public override long GetTimestamp() => GetUtcNow().UtcTicks;

    /// <summary>Moves the clock forward by <paramref name="delta"/>, firing every timer that falls due on the way.</summary>
    /// <param name="delta">How far to move, zero or more.</param>
    public void Advance(TimeSpan delta)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(delta, TimeSpan.Zero);
        SetUtcNow(GetUtcNow() + delta);
    }

    /// <summary>Moves the clock forward to <paramref name="value"/>, firing every timer that falls due on the way.</summary>
    /// <param name="value">The new time, not before the current one.</param>
    public void SetUtcNow(DateTimeOffset value)
    {
        lock (_lock)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, _now);
        }

        RunUntil(value);
    }

    private void RunUntil(DateTimeOffset? until)
    {
        while (true)
        {
            FakeTimer? next = null;
            lock (_lock)
            {
                var value = until is { } u && u > _now ? u : _now;
                foreach (var timer in _timers)
                {
                    if (timer.Due is { } due && due <= value && (next is null || due < next.Due))
                    {
                        next = timer;
                    }
                }

                if (next is null)
                {
                    _now = value;
                    return;
                }

                _now = next.Due!.Value;
                next.Due = next.Period is { } period ? _now + period : null;
            }

            next.Fire();
        }
    }

    /// <inheritdoc />
    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        ArgumentNullException.ThrowIfNull(callback);
        var timer = new FakeTimer(this, callback, state);
        lock (_lock)
        {
            _timers.Add(timer);
        }

        timer.Change(dueTime, period);
        return timer;
    }

    private sealed class FakeTimer(FakeTimeProvider owner, TimerCallback callback, object? state) : ITimer
    {
        public DateTimeOffset? Due { get; set; }

        public TimeSpan? Period { get; private set; }

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            // The same limits as System.Threading.Timer, so that a fake clock does not hide an out-of-range due time.
            ArgumentOutOfRangeException.ThrowIfGreaterThan(dueTime, TimerLimits.Max);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(period, TimerLimits.Max);
            if (dueTime < TimeSpan.Zero && dueTime != Timeout.InfiniteTimeSpan)
            {
                throw new ArgumentOutOfRangeException(nameof(dueTime));
            }

            lock (owner._lock)
            {
                if (!owner._timers.Contains(this))
                {
                    return false;
                }

                Due = dueTime == Timeout.InfiniteTimeSpan ? null : owner._now + (dueTime < TimeSpan.Zero ? TimeSpan.Zero : dueTime);
                Period = period == Timeout.InfiniteTimeSpan || period == TimeSpan.Zero ? null : period;
            }

            if (dueTime == TimeSpan.Zero)
            {
                // Like System.Threading.Timer, a zero due time fires right away, on the thread pool.
                ThreadPool.UnsafeQueueUserWorkItem(static o => o.RunUntil(until: null), owner, preferLocal: false);
            }

            return true;
        }

        public void Fire() => callback(state);

        public void Dispose()
        {
            lock (owner._lock)
            {
                owner._timers.Remove(this);
            }
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
