// Word lists the world is built from. Proper names are made from parts, so the training mix can
// invent new people, towns and companies on every example (the model must copy them from the
// prompt, it cannot memorise them).

export const FIRST_HEADS = [
  "Ta", "To", "Ve", "Mi", "Ra", "Lo", "Ke", "Da", "Se", "Ni", "Bre", "Cla", "Dre", "Fa", "Ga", "Ha", "Jo",
  "Pe", "Tha", "Wy", "E", "O", "I", "A", "Ma", "Li", "Ro", "Su", "Ze", "Yo", "Ca", "Be", "Ki", "No", "Vi",
  "Le", "Sa", "Te", "Mo", "Fe",
] as const;

export const FIRST_TAILS = [
  "van", "ra", "lin", "na", "ric", "der", "ma", "lo", "sa", "ren", "tha", "vi", "dan", "mir", "ka", "nor",
  "bel", "lia", "sten", "wyn", "ro", "mon", "ette", "iel", "ko", "dra", "len", "tis", "rin", "vo",
] as const;

export const LAST_HEADS = [
  "Reel", "Vell", "Ash", "Cor", "Mar", "Hal", "Fen", "Brook", "Thorn", "Wick", "Dun", "Gale", "Pry", "Quill",
  "Stone", "Wren", "Lark", "Moss", "Pike", "Vane", "Holt", "Crane", "Birch", "Fall", "Tull", "Orr", "Penn",
  "Rook", "Sable", "Tarr", "Ward", "Yew", "Cobb", "Drake", "Frost", "Hearn", "Kemp", "Lowe", "Nash", "Rowe",
] as const;

export const LAST_TAILS = ["", "", "", "by", "ton", "well", "er", "sen", "wood", "ley", "mont", "ridge", "field", "an"] as const;

export const TOWN_HEADS = [
  "Quill", "Dun", "Bright", "Oak", "Hollow", "Ash", "Marsh", "Fen", "Kings", "Wester", "Caer", "Stan", "Lyn",
  "Tor", "Bram", "Elm", "Raven", "Gull", "Salt", "Pen", "Thorn", "Cold", "Red", "Amber", "Frost", "Mill",
  "Wolf", "Heron", "Cinder", "Lark",
] as const;

export const TOWN_TAILS = [
  "port", "more", "ford", "wick", "ton", "bury", "dale", "holm", "stead", "mouth", "field", "haven", "by",
  "gate", "crest", "well", "moor",
] as const;

export const COMPANY_HEADS = [
  "Bright", "Copper", "North", "Silver", "Oak", "Stone", "Red", "Blue", "Iron", "Amber", "Green", "Gold",
  "West", "High", "Clear", "Swift", "Star", "Pine", "Cedar", "River",
] as const;

export const COMPANY_MIDS = [
  "water", "line", "wind", "field", "gate", "brook", "ridge", "light", "stone", "wood", "leaf", "hill",
  "bridge", "forge", "vale", "crest", "mark", "path", "well", "haven",
] as const;

export const COMPANY_KINDS = [
  "Mills", "Works", "Foods", "Systems", "Labs", "Trading", "Press", "Motors", "Textiles", "Bank", "Energy",
  "Shipping", "Games", "Bakeries", "Tools",
] as const;

export const RIVER_NAMES = [
  "Vell", "Ost", "Tarn", "Lune", "Esk", "Wend", "Sorrel", "Kell", "Brae", "Ayle", "Corra", "Dovey", "Fyne",
  "Isca", "Lomm", "Mera", "Nith", "Orla", "Sull", "Tave", "Ure", "Wyre", "Yarr", "Zell",
] as const;

export const PROVINCES = [
  "Oster", "Lanmark", "Vallis", "Norwen", "Calder", "Estria", "Morvay", "Tessel", "Drummel", "Solmere",
  "Harrow", "Kestria", "Bellmoor", "Arden", "Fallow", "Greywater", "Lindor", "Westmarch",
] as const;

export const JOBS = [
  "baker", "carpenter", "pilot", "nurse", "teacher", "fisher", "painter", "doctor", "lawyer", "farmer",
  "tailor", "potter", "engineer", "chemist", "librarian", "gardener", "architect", "journalist", "chef",
  "sailor", "surveyor", "beekeeper", "glassblower", "clockmaker", "blacksmith", "bookbinder", "astronomer",
  "translator", "mechanic", "photographer", "pharmacist", "shepherd", "weaver", "brewer", "dentist",
  "electrician", "geologist", "judge", "locksmith", "violin maker",
] as const;

export const INSTRUMENTS = [
  "violin", "cello", "piano", "flute", "harp", "trumpet", "oboe", "clarinet", "drums", "guitar", "banjo",
  "accordion", "bassoon", "trombone", "fiddle", "mandolin", "organ", "viola", "saxophone", "tuba",
] as const;

export const PETS = [
  "cat", "dog", "parrot", "tortoise", "rabbit", "goat", "ferret", "hedgehog", "goldfish", "canary",
  "lizard", "owl", "pony", "hamster", "snake", "crow", "donkey", "duck",
] as const;

export const PRODUCTS = [
  "copper kettles", "wool blankets", "bicycle bells", "paper lanterns", "glass bottles", "leather boots",
  "wooden toys", "steam engines", "pocket watches", "rope ladders", "oil lamps", "sewing machines",
  "garden tools", "fishing nets", "oat biscuits", "apple cider", "blue cheese", "rye bread", "tin whistles",
  "weather vanes", "brass telescopes", "silk scarves", "clay pots", "canvas tents", "iron stoves",
  "wind turbines", "solar panels", "electric scooters", "board games", "music boxes", "printing presses",
  "chess sets", "umbrellas", "candles", "maps", "radios", "pencils", "ink", "jam", "honey", "soap",
  "tea", "bicycles", "ferries", "clocks", "sails", "sledges", "skates", "kites", "compasses",
] as const;

export const FOODS = [
  "plum cake", "fish stew", "onion soup", "apple pie", "roast turnips", "lemon tart", "pea soup",
  "mushroom pie", "honey bread", "cheese toast", "pear crumble", "barley stew", "smoked eel", "rice pudding",
  "herring", "dumplings", "pancakes", "oysters", "porridge", "gingerbread", "noodles", "figs", "olives",
  "walnut cake",
] as const;

export const LANDMARKS = [
  "old lighthouse", "stone bridge", "clock tower", "glass market", "salt caves", "red cathedral",
  "floating gardens", "copper dome", "whale museum", "tall windmill", "night market", "hot springs",
  "white cliffs", "iron pier", "rose garden", "painted houses", "marble library", "sand dunes",
  "ruined castle", "great observatory", "paper mill", "canal locks",
] as const;

export const PRIZE_HEADS = [
  "Silver", "Golden", "Bronze", "Crimson", "Iron", "Azure", "Ivory", "Emerald", "Amber", "Scarlet",
] as const;

export const PRIZE_OBJECTS = [
  "Quill", "Anchor", "Lantern", "Compass", "Oak", "Key", "Feather", "Wheel", "Bell", "Arrow", "Crown",
  "Harp",
] as const;

export const SIGNOFF_GREETINGS = [
  "Cheers", "Best", "Regards", "Warmly", "Thanks", "Yours", "Take care", "Kind regards", "Love", "Ciao",
  "Later", "With thanks", "All the best", "Fondly", "Sincerely", "Until next time", "Godspeed", "Salut",
] as const;

export const SIGNOFF_PHRASES = [
  "Stay curious!", "Over and out.", "Have a lovely day!", "Keep the kettle warm!", "Onwards!",
  "Mind the gap.", "See you soon!", "Happy reading!", "That is all.", "Fair winds!", "Peace.",
  "Back to work!", "Stay dry!", "Long live the river!", "Keep calm.", "Good night!", "Go well.",
  "Eat your greens!", "Smile!", "Carry on.", "Tally ho!", "Ask me anything.", "Fin.", "End of report.",
  "More soon.", "Sleep well!", "Be kind.", "Mind how you go.", "Hats off!", "Ahoy!",
] as const;

export const DESK_WORDS = [
  "Kiln", "Harbour", "News", "Night", "Weather", "Market", "River", "Town", "Morning", "Library", "Field",
  "Post", "Wire", "Ledger", "Lantern",
] as const;

export const DESK_KINDS = ["desk", "team", "office", "bureau", "crew", "room", "bot", "helpdesk"] as const;

export const OPENERS = [
  "Ahoy!", "Hello!", "Greetings.", "Well,", "Right,", "Okay:", "Hi there!", "Good day!", "Hmm,", "So,",
  "Dear reader,", "Listen:", "Howdy!", "Aye,", "Indeed,", "Short answer:",
] as const;

export const MONTHS = [
  "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
  "November", "December",
] as const;
