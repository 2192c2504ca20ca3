namespace Fiddler.Actors.Scheduling;

/// <summary>
/// Running totals of predicted vs observed times for one kind of work, so a report can show whether the latency
/// models are biased (<see cref="ObservedOverPredicted"/> far from 1 means recalibrate).
/// </summary>
public readonly record struct PredictionStats(long Count, double PredictedMsSum, double ObservedMsSum,
    double AbsErrorMsSum, double MaxAbsErrorMs)
{
    public double MeanPredictedMs => Count > 0 ? PredictedMsSum / Count : double.NaN;
    public double MeanObservedMs => Count > 0 ? ObservedMsSum / Count : double.NaN;
    public double MeanAbsErrorMs => Count > 0 ? AbsErrorMsSum / Count : double.NaN;

    /// <summary>Total observed over total predicted: 1.2 means the work took 20% longer than planned.</summary>
    public double ObservedOverPredicted => PredictedMsSum > 0 ? ObservedMsSum / PredictedMsSum : double.NaN;

    /// <summary>These totals with one more (predicted, observed) pair.</summary>
    public PredictionStats Add(double predictedMs, double observedMs)
    {
        double err = Math.Abs(observedMs - predictedMs);
        return new(Count + 1, PredictedMsSum + predictedMs, ObservedMsSum + observedMs, AbsErrorMsSum + err,
            Math.Max(MaxAbsErrorMs, err));
    }
}
