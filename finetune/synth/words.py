"""English word classes the answer finder and the cloze questions share."""

from __future__ import annotations

PERSON_VERBS = {"said", "says", "wrote", "writes", "won", "wins", "founded", "invented", "discovered", "proposed",
                "argued", "became", "died", "married", "painted", "composed", "directed", "led", "ruled", "born",
                "believed", "thought", "claimed", "designed", "introduced", "published"}
TITLES = {"mr", "mrs", "ms", "dr", "prof", "professor", "sir", "president", "king", "queen", "saint", "st", "lord", "lady",
          "emperor", "empress", "pope", "prince", "princess", "duke", "general", "senator", "chancellor", "minister"}
AUX = {"is", "are", "was", "were", "has", "have", "had", "can", "could", "will", "would", "should", "may", "might",
       "must", "does", "do", "did", "shall"}
PREPOSITIONS = {"of", "in", "on", "at", "to", "for", "with", "by", "from", "into", "onto", "over", "under", "about",
                "than", "as", "via", "per", "after", "before", "during", "since", "until", "between", "through",
                "against", "without", "within", "like", "near", "across", "among", "toward", "towards", "upon"}
FOLLOW_OK = AUX | PREPOSITIONS | {"and", "or", "but", "that", "which", "who", "whose", "when", "where", "not",
                                 "also", "then", "so", "if", "because", "while"}
DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "its", "their", "his", "her", "our", "your",
               "every", "each", "some", "many", "most", "all", "any", "no", "one", "both", "such"}
YEAR_PREPS = {"in", "on", "since", "by", "until", "till", "during", "before", "after", "around", "from"}

SUBORDINATORS = {"when", "if", "because", "although", "though", "while", "since", "as", "unless", "after", "before",
                 "once", "whenever", "whereas"}
PRONOUNS = {"it", "they", "we", "you", "he", "she", "i"}
