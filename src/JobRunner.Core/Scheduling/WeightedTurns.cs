namespace JobRunner.Scheduling;

/// <summary>A participant in <see cref="WeightedTurns{T}"/>: its pass, and whether it waits for a turn.</summary>
internal interface ITurnTaker
{
    double Pass { get; set; }

    bool InTurn { get; set; }
}

/// <summary>
/// Stride scheduling, shared by the in-memory queue and the scheduler so both split a band the same way: the participant
/// with the lowest pass goes next and its pass then grows by 1/weight; one that joins (or comes back) starts at the
/// current pass, so waiting earns no credit and an idle participant's share goes to the others.
/// </summary>
internal sealed class WeightedTurns<T>
    where T : class, ITurnTaker
{
    private readonly PriorityQueue<T, (double Pass, long Sequence)> _heap = new();
    private double _virtualTime;
    private long _sequence;

    public int Count => _heap.Count;

    /// <summary>Adds a participant that is not waiting yet, at the current pass.</summary>
    public void Join(T participant)
    {
        if (!participant.InTurn)
        {
            participant.Pass = Math.Max(participant.Pass, _virtualTime);
            Push(participant);
        }
    }

    /// <summary>Takes the participant whose turn it is (the lowest pass, then the earliest queued).</summary>
    public bool TryNext(out T participant)
    {
        if (!_heap.TryDequeue(out participant!, out _))
        {
            return false;
        }

        participant.InTurn = false;
        return true;
    }

    /// <summary>Charges a participant for one turn.</summary>
    public void Served(T participant, int weight)
    {
        _virtualTime = Math.Max(_virtualTime, participant.Pass);
        participant.Pass += 1.0 / weight;
    }

    /// <summary>
    /// Puts back in line a participant that was skipped (it had nothing it may run now, e.g. behind a limit), with at
    /// most one turn of credit: its pass is raised to one turn behind the current pass. Without the cap a participant
    /// blocked for long keeps its old pass while the others advance, and once unblocked it takes as many turns in a row
    /// as the others took meanwhile.
    /// </summary>
    public void PushSkipped(T participant, int weight)
    {
        participant.Pass = Math.Max(participant.Pass, _virtualTime - (1.0 / weight));
        Push(participant);
    }

    /// <summary>Puts a participant back in line at its pass (after a turn).</summary>
    public void Push(T participant)
    {
        participant.InTurn = true;
        _heap.Enqueue(participant, (participant.Pass, ++_sequence));
    }
}
