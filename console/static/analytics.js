// Draws the event funnel's bar chart (Chart.js) from the JSON in the
// canvas's data-chart attribute (the CSP allows no inline script): a bar
// per step, for everybody and the largest breakdown groups.
(function () {
  "use strict";
  const canvas = document.getElementById("funnel-chart");
  if (!canvas) {
    return;
  }
  const colours = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#9aa5b1"];
  try {
    const data = JSON.parse(canvas.dataset.chart);
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: data.series.map(function (series, index) {
          return {
            label: series.label,
            data: series.people,
            backgroundColor: colours[index % colours.length],
          };
        }),
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } },
      },
    });
    canvas.dataset.drawn = "true";
  } catch (error) {
    const problem = document.getElementById("chart-problem");
    problem.textContent = "The chart could not be drawn: " + error.message;
    problem.hidden = false;
  }
})();
